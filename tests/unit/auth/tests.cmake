# Unit tests of src/auth/: ag_unit_test(name source.c ...)
ag_unit_test(curl_loop ${CMAKE_CURRENT_LIST_DIR}/test_curl_loop.c)
ag_unit_test(credential ${CMAKE_CURRENT_LIST_DIR}/test_credential.c)
ag_unit_test(credential_e2e ${CMAKE_CURRENT_LIST_DIR}/test_credential_e2e.c)
add_dependencies(credential_e2e fake_identity)
# Inbound Entra ID token validation (jwt, jwks, token cache, authz, auth config) and the JWKS manager.
# The tests mint tokens in-process with the TEST-ONLY entra_testkit (tests/fakes/entra.cmake).
foreach(t b64url jwks jwt token_cache authz)
  ag_unit_test(auth_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.c)
  target_link_libraries(auth_${t} PRIVATE entra_testkit)
endforeach()
# The JWKS manager against the fake_entra binary (startup, refresh, rotation, outage, refetch limit).
add_executable(fake_entra_test ${CMAKE_CURRENT_LIST_DIR}/test_jwks_manager.c)
target_include_directories(fake_entra_test PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit)
target_compile_options(fake_entra_test PRIVATE ${AG_WARNINGS})
target_link_libraries(fake_entra_test PRIVATE entra_testkit aoai_core)
add_test(NAME fake.entra COMMAND fake_entra_test $<TARGET_FILE:fake_entra> $<TARGET_FILE:mint_token>)
set_tests_properties(fake.entra PROPERTIES LABELS fake TIMEOUT 120)
