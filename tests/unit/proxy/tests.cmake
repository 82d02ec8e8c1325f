# Unit tests of src/proxy/: ag_unit_test(name source.c ...)
ag_unit_test(proxy_usage ${CMAKE_CURRENT_LIST_DIR}/test_usage.c)
ag_unit_test(proxy_resp_doc ${CMAKE_CURRENT_LIST_DIR}/test_resp_doc.c)
ag_unit_test(proxy_route ${CMAKE_CURRENT_LIST_DIR}/test_route.c)
