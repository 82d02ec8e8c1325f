# Unit tests of src/util/: ag_unit_test(name source.c ...)
ag_unit_test(util_growbuf ${CMAKE_CURRENT_LIST_DIR}/test_growbuf.c)
ag_unit_test(util_utf8 ${CMAKE_CURRENT_LIST_DIR}/test_utf8.c)
ag_unit_test(util_uuid ${CMAKE_CURRENT_LIST_DIR}/test_uuid.c)
