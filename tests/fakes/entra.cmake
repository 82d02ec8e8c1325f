# Stand-in: entra — OpenID metadata + JWKS for test keys (fake_entra), a token minting tool
# (mint_token), and the TEST-ONLY helper library both use (entra_testkit, also linked by the auth unit
# tests and benchmarks to mint tokens in-process). entra_testkit uses aoai_core only for strict
# base64url encoding.
add_library(entra_testkit STATIC ${CMAKE_CURRENT_LIST_DIR}/entra_testkit.c)
target_include_directories(entra_testkit PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_options(entra_testkit PRIVATE ${AG_WARNINGS})
target_link_libraries(entra_testkit PUBLIC aoai_core PkgConfig::CJSON OpenSSL::Crypto)

add_executable(fake_entra ${CMAKE_CURRENT_LIST_DIR}/fake_entra.c)
target_compile_options(fake_entra PRIVATE ${AG_WARNINGS})
target_link_libraries(fake_entra PRIVATE entra_testkit PkgConfig::LIBEVENT)

add_executable(mint_token ${CMAKE_CURRENT_LIST_DIR}/mint_token.c)
target_compile_options(mint_token PRIVATE ${AG_WARNINGS})
target_link_libraries(mint_token PRIVATE entra_testkit)
