# Fuzz targets (tests/fuzz/README.md). Every target is built twice:
#
#  (a) always, with the project's compiler and flags, as a plain executable whose main()
#      (replay_main.c) runs LLVMFuzzerTestOneInput over the target's seed corpus: CTest tests
#      fuzz.replay.<target>. Under AG_SANITIZE=ON they run under ASan/UBSan like everything else.
#
#  (b) when clang with libFuzzer is available, with clang -fsanitize=fuzzer,address,undefined over
#      its own instrumented copy of the aoai_core sources (custom commands invoking clang directly,
#      whatever CMAKE_C_COMPILER is): CTest tests fuzz.run.<target> fuzz for AG_FUZZ_SECONDS each,
#      on a copy of the corpus in the build tree, and fail on any crash, leak, timeout or
#      out-of-memory. AG_FUZZ_SECONDS=0 turns (b) off; AG_FUZZ=ON makes a missing libFuzzer a
#      configuration error instead of a skipped step.

set(AG_FUZZ_TARGETS http_request jwt jwks body sse config)
set(AG_FUZZ_SRC ${CMAKE_CURRENT_LIST_DIR})
set(AG_FUZZ_SECONDS 20 CACHE STRING "Seconds each fuzz.run.<target> test fuzzes (0: no libFuzzer build)")

# ---- (a) corpus replay with the project's compiler ----------------------------------------------
foreach(t ${AG_FUZZ_TARGETS})
  add_executable(fuzz_${t} ${AG_FUZZ_SRC}/fuzz_${t}.c ${AG_FUZZ_SRC}/replay_main.c)
  target_include_directories(fuzz_${t} PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_compile_options(fuzz_${t} PRIVATE ${AG_WARNINGS})
  target_link_libraries(fuzz_${t} PRIVATE aoai_core)
  add_test(NAME fuzz.replay.${t} COMMAND fuzz_${t} ${AG_FUZZ_SRC}/corpus/${t})
  set_tests_properties(fuzz.replay.${t} PROPERTIES LABELS "fuzz;fuzz-replay" TIMEOUT 300)
endforeach()

# ---- (b) libFuzzer builds and time-boxed runs ---------------------------------------------------
if(NOT AG_FUZZ_SECONDS OR AG_FUZZ_SECONDS EQUAL 0)
  return()
endif()

find_program(AG_CLANG NAMES clang clang-16 clang-15 clang-14 DOC "clang used for the libFuzzer builds")
if(AG_CLANG AND NOT DEFINED AG_LIBFUZZER_WORKS)
  set(_probe_dir ${CMAKE_BINARY_DIR}/CMakeFiles/ag_libfuzzer_probe)
  file(MAKE_DIRECTORY ${_probe_dir})
  file(WRITE ${_probe_dir}/probe.c
    "#include <stddef.h>\n#include <stdint.h>\n"
    "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\n"
    "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return n > 0 && d[0] == 1; }\n")
  execute_process(COMMAND ${AG_CLANG} -fsanitize=fuzzer,address,undefined ${_probe_dir}/probe.c
                          -o ${_probe_dir}/probe
                  RESULT_VARIABLE _probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(_probe_rc EQUAL 0)
    set(AG_LIBFUZZER_WORKS ON CACHE INTERNAL "clang links -fsanitize=fuzzer")
  else()
    set(AG_LIBFUZZER_WORKS OFF CACHE INTERNAL "clang links -fsanitize=fuzzer")
  endif()
endif()
if(NOT AG_CLANG OR NOT AG_LIBFUZZER_WORKS)
  if(AG_FUZZ)
    message(FATAL_ERROR "AG_FUZZ=ON needs clang with libFuzzer (Debian: clang libclang-rt-14-dev)")
  endif()
  message(STATUS "fuzz: clang with libFuzzer not found; fuzz.run.* tests are not registered")
  return()
endif()
message(STATUS "fuzz: libFuzzer builds with ${AG_CLANG}, ${AG_FUZZ_SECONDS} s per fuzz.run test")

set(_fz_dir ${CMAKE_BINARY_DIR}/fuzz-libfuzzer)
file(MAKE_DIRECTORY ${_fz_dir}/obj)
set(_fz_cflags -std=c11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
    -fno-sanitize-recover=undefined -D_GNU_SOURCE "-DAG_VERSION=\"${PROJECT_VERSION}\""
    -I${CMAKE_SOURCE_DIR}/include -I${CMAKE_SOURCE_DIR}/src -isystem ${LLHTTP_INCLUDE_DIR})
foreach(_dirs LIBEVENT_INCLUDE_DIRS CJSON_INCLUDE_DIRS CURL_INCLUDE_DIRS PCRE2_INCLUDE_DIRS
              HIREDIS_INCLUDE_DIRS OPENSSL_INCLUDE_DIR ZLIB_INCLUDE_DIRS)
  foreach(_d ${${_dirs}})
    list(APPEND _fz_cflags -isystem ${_d})
  endforeach()
endforeach()
set(_fz_libs ${LIBEVENT_LINK_LIBRARIES} ${CJSON_LINK_LIBRARIES} ${CURL_LINK_LIBRARIES}
    ${PCRE2_LINK_LIBRARIES} ${HIREDIS_LINK_LIBRARIES} ${OPENSSL_SSL_LIBRARY} ${OPENSSL_CRYPTO_LIBRARY}
    ${ZLIB_LIBRARIES} -pthread -lm)

# One instrumented object per aoai_core source (and llhttp's), archived like aoai_core itself so
# each target pulls only what it uses.
get_target_property(_core_srcs aoai_core SOURCES)
set(_fz_objs)
foreach(_src ${_core_srcs} ${LLHTTP_SRC_DIR}/llhttp.c ${LLHTTP_SRC_DIR}/api.c ${LLHTTP_SRC_DIR}/http.c)
  file(RELATIVE_PATH _rel ${CMAKE_SOURCE_DIR} ${_src})
  if(_rel MATCHES "^\\.\\.")
    get_filename_component(_name ${_src} NAME_WE)
    set(_rel "llhttp/${_name}.c")
    set(_extra -w -DLLHTTP_STRICT_MODE=1)
  else()
    set(_extra -w) # warnings are the gcc build's business; this copy only adds instrumentation
  endif()
  string(REGEX REPLACE "[/.]" "_" _oname ${_rel})
  set(_obj ${_fz_dir}/obj/${_oname}.o)
  add_custom_command(OUTPUT ${_obj}
    COMMAND ${AG_CLANG} ${_fz_cflags} ${_extra} -MD -MF ${_obj}.d -c ${_src} -o ${_obj}
    DEPENDS ${_src} DEPFILE ${_obj}.d
    COMMENT "clang (libFuzzer) ${_rel}" VERBATIM)
  list(APPEND _fz_objs ${_obj})
endforeach()
set(_fz_lib ${_fz_dir}/libaoai_fuzzcore.a)
add_custom_command(OUTPUT ${_fz_lib}
  COMMAND ${CMAKE_COMMAND} -E rm -f ${_fz_lib}
  COMMAND ${CMAKE_AR} qc ${_fz_lib} ${_fz_objs}
  COMMAND ${CMAKE_RANLIB} ${_fz_lib}
  DEPENDS ${_fz_objs} COMMENT "archive libaoai_fuzzcore.a" VERBATIM)

set(_fz_warn ${AG_WARNINGS})
list(REMOVE_ITEM _fz_warn -Werror)
set(_fz_exes)
foreach(t ${AG_FUZZ_TARGETS})
  set(_exe ${_fz_dir}/fuzz_${t})
  set(_known)
  add_custom_command(OUTPUT ${_exe}
    COMMAND ${AG_CLANG} ${_fz_cflags} ${_known} ${_fz_warn} -Wno-unknown-warning-option -fsanitize=fuzzer
            -MD -MF ${_exe}.d ${AG_FUZZ_SRC}/fuzz_${t}.c ${_fz_lib} ${_fz_libs} -o ${_exe}
    DEPENDS ${AG_FUZZ_SRC}/fuzz_${t}.c ${_fz_lib} DEPFILE ${_exe}.d
    COMMENT "clang (libFuzzer) fuzz_${t}" VERBATIM)
  list(APPEND _fz_exes ${_exe})

  set(_dict)
  if(EXISTS ${AG_FUZZ_SRC}/dict/${t}.dict)
    set(_dict -DDICT=${AG_FUZZ_SRC}/dict/${t}.dict)
  endif()
  add_test(NAME fuzz.run.${t}
    COMMAND ${CMAKE_COMMAND} -DFUZZER=${_exe} -DCORPUS=${AG_FUZZ_SRC}/corpus/${t}
            -DWORK=${_fz_dir}/run/${t} -DSECONDS=${AG_FUZZ_SECONDS} ${_dict}
            -P ${AG_FUZZ_SRC}/run_fuzzer.cmake)
  math(EXPR _timeout "${AG_FUZZ_SECONDS} + 120")
  set_tests_properties(fuzz.run.${t} PROPERTIES LABELS "fuzz;fuzz-run" TIMEOUT ${_timeout} PROCESSORS 1)
endforeach()
add_custom_target(fuzz_libfuzzer ALL DEPENDS ${_fz_exes})
