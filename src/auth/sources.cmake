# Sources of src/auth/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/identity.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/credential.c ${CMAKE_CURRENT_LIST_DIR}/credential_config.c ${CMAKE_CURRENT_LIST_DIR}/credential_wire.c)
target_sources(aoai_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/b64url.c
  ${CMAKE_CURRENT_LIST_DIR}/auth_config.c
  ${CMAKE_CURRENT_LIST_DIR}/jwks.c
  ${CMAKE_CURRENT_LIST_DIR}/jwt.c
  ${CMAKE_CURRENT_LIST_DIR}/token_cache.c
  ${CMAKE_CURRENT_LIST_DIR}/authz.c
  ${CMAKE_CURRENT_LIST_DIR}/auth.c
  ${CMAKE_CURRENT_LIST_DIR}/jwks_manager.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/auth_stage.c)
