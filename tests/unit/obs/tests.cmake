# Unit tests of src/obs/: ag_unit_test(name source.c ...)
ag_unit_test(metrics ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c)
