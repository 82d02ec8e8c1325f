# One time-boxed libFuzzer run (the fuzz.run.<target> CTest tests; see tests/fuzz/README.md).
#   cmake -DFUZZER=exe -DCORPUS=seed-dir -DWORK=dir -DSECONDS=n [-DDICT=file] -P run_fuzzer.cmake
# The seed corpus is copied to WORK/corpus first and libFuzzer writes only there, so the source
# tree is never touched. Any crash, leak, timeout or out-of-memory fails the run; the reproducer is
# left in WORK/artifacts/.
foreach(v FUZZER CORPUS WORK SECONDS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${v}=... is required")
  endif()
endforeach()
if(NOT IS_DIRECTORY "${CORPUS}")
  message(FATAL_ERROR "seed corpus ${CORPUS} is missing")
endif()
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/corpus" "${WORK}/artifacts")
file(GLOB _seeds "${CORPUS}/*")
file(COPY ${_seeds} DESTINATION "${WORK}/corpus")
set(_args -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -max_len=65536
          -print_final_stats=1 -artifact_prefix=${WORK}/artifacts/)
if(DEFINED DICT)
  list(APPEND _args -dict=${DICT})
endif()
execute_process(COMMAND "${FUZZER}" ${_args} "${WORK}/corpus"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
string(LENGTH "${out}" _len)
if(_len GREATER 20000)
  math(EXPR _start "${_len} - 20000")
  string(SUBSTRING "${out}" ${_start} 20000 out)
endif()
message("${out}")
if(NOT rc EQUAL 0)
  file(GLOB _found "${WORK}/artifacts/*")
  message(FATAL_ERROR "libFuzzer exited with ${rc}. Reproducer(s): ${_found}\n"
                      "Replay one with: ${FUZZER} <file>  (or the replay build: fuzz_<target> <file>),\n"
                      "then add it to ${CORPUS}/ as a regression input once fixed.")
endif()
