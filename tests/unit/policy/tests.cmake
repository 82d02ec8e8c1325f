# Unit tests of src/policy/: ag_unit_test(name source.c ...)
ag_unit_test(policy_normalize ${CMAKE_CURRENT_LIST_DIR}/test_normalize.c)
ag_unit_test(policy_litset ${CMAKE_CURRENT_LIST_DIR}/test_litset.c)
ag_unit_test(policy_detect ${CMAKE_CURRENT_LIST_DIR}/test_detect.c)
ag_unit_test(policy_conf ${CMAKE_CURRENT_LIST_DIR}/test_policy_conf.c)
ag_unit_test(policy_request ${CMAKE_CURRENT_LIST_DIR}/test_policy_request.c)
ag_unit_test(policy_stream ${CMAKE_CURRENT_LIST_DIR}/test_policy_stream.c)

# Micro-benchmark: a plain executable, not a CTest test (timing does not belong in unit tests).
# Run: build/tests/bench_policy [CPU ms per case]
add_executable(bench_policy ${CMAKE_CURRENT_LIST_DIR}/bench_policy.c)
target_compile_options(bench_policy PRIVATE ${AG_WARNINGS})
target_link_libraries(bench_policy PRIVATE aoai_core)
