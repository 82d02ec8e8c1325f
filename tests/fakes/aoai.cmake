# Stand-in: aoai — the fake Azure OpenAI data plane (tests/fakes/README-aoai.md).
# It compiles the two shared helpers it uses (strict JSON, config readers) itself instead of linking
# all of aoai_core, so the stand-in builds even while a product stage is half-way through a change.
add_executable(fake_aoai
  ${CMAKE_CURRENT_LIST_DIR}/fake_aoai.c
  ${CMAKE_CURRENT_LIST_DIR}/fake_aoai_api.c
  ${CMAKE_CURRENT_LIST_DIR}/fake_aoai_state.c
  ${CMAKE_SOURCE_DIR}/src/util/json_strict.c
  ${CMAKE_SOURCE_DIR}/src/config/confparse.c)
target_include_directories(fake_aoai PRIVATE ${CMAKE_SOURCE_DIR}/include)
target_compile_definitions(fake_aoai PRIVATE _GNU_SOURCE)
target_compile_options(fake_aoai PRIVATE ${AG_WARNINGS})
target_link_libraries(fake_aoai PRIVATE llhttp PkgConfig::LIBEVENT PkgConfig::CJSON OpenSSL::Crypto m)

add_test(NAME fake.aoai COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/test_fake_aoai.py $<TARGET_FILE:fake_aoai>)
set_tests_properties(fake.aoai PROPERTIES LABELS fake TIMEOUT 120)
