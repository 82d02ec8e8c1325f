# Unit tests of src/server/: ag_unit_test(name source.c ...)
ag_unit_test(server_event_mem ${CMAKE_CURRENT_LIST_DIR}/test_event_mem.c)
ag_unit_test(server_http ${CMAKE_CURRENT_LIST_DIR}/test_http.c)
