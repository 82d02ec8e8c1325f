# Stand-in: identity (Entra token endpoint, IMDS, App Service managed identity) for the proxy's own credential.
add_executable(fake_identity ${CMAKE_CURRENT_LIST_DIR}/fake_identity.c)
target_compile_options(fake_identity PRIVATE ${AG_WARNINGS})
target_compile_definitions(fake_identity PRIVATE _GNU_SOURCE)
target_link_libraries(fake_identity PRIVATE PkgConfig::LIBEVENT PkgConfig::CJSON)
