# Unit tests of src/limit/: ag_unit_test(name source.c ...)
ag_unit_test(limit_counter ${CMAKE_CURRENT_LIST_DIR}/test_counter.c)
ag_unit_test(limit_memstore ${CMAKE_CURRENT_LIST_DIR}/test_memstore.c)
ag_unit_test(limit_ratelimit ${CMAKE_CURRENT_LIST_DIR}/test_ratelimit.c)
ag_unit_test(limit_estimate ${CMAKE_CURRENT_LIST_DIR}/test_estimate.c)
# Starts its own redis-server on a free 127.0.0.1 port; fails (does not skip) when it is missing.
ag_unit_test(limit_redis ${CMAKE_CURRENT_LIST_DIR}/test_redis.c)
set_tests_properties(unit.limit_redis PROPERTIES LABELS "unit;redis" TIMEOUT 60)
