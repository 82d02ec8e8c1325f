# Benchmarks: micro-benchmarks and the bench driver smoke (tests/bench/README.md).
# scripts/bench.sh builds these in Release and runs tests/bench/bench.py; CTest only checks that they work.

# Stage micro-benchmarks (ns per operation), linked with the product library and the TEST-ONLY token kit.
add_executable(bench_stages ${CMAKE_CURRENT_LIST_DIR}/bench_stages.c)
target_compile_options(bench_stages PRIVATE ${AG_WARNINGS})
target_link_libraries(bench_stages PRIVATE aoai_core entra_testkit)
target_compile_definitions(bench_stages PRIVATE AG_BENCH_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
# The policy engine is measured only when its header is in the tree.
if(EXISTS ${CMAKE_SOURCE_DIR}/include/aoai_guard/policy.h)
  target_compile_definitions(bench_stages PRIVATE AG_BENCH_HAVE_POLICY=1)
endif()

# Streaming client: TTFB / TTLB per request on one keep-alive connection (plain libc).
add_executable(bench_sse ${CMAKE_CURRENT_LIST_DIR}/bench_sse.c)
target_compile_options(bench_sse PRIVATE ${AG_WARNINGS})
target_compile_definitions(bench_sse PRIVATE _GNU_SOURCE)

# Token minting for the cached- and cold-token scenarios (TEST keys of fake_entra).
add_executable(bench_mint ${CMAKE_CURRENT_LIST_DIR}/bench_mint.c)
target_compile_options(bench_mint PRIVATE ${AG_WARNINGS})
target_link_libraries(bench_mint PRIVATE entra_testkit)

# Correctness of the micro-benchmarks: every case runs a few iterations and checks its result.
add_test(NAME bench.stages.smoke COMMAND bench_stages --smoke)
set_tests_properties(bench.stages.smoke PROPERTIES LABELS bench TIMEOUT 120)

# Correctness of the bench driver: the plain scenario against aoai-guard for ~10 s (wrk when installed,
# else a python client; nginx too when installed), failing on any non-200 or socket error. No timing
# assertion. Run alone: it saturates both cores.
add_test(NAME bench.smoke
  COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/bench.py --smoke --duration 10
    --ag-bin $<TARGET_FILE:aoai-guard> --fake-aoai $<TARGET_FILE:fake_aoai> --sse-client $<TARGET_FILE:bench_sse>)
set_tests_properties(bench.smoke PROPERTIES LABELS bench TIMEOUT 300 RUN_SERIAL TRUE
  ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
