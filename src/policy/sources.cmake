# Sources of src/policy/ (added to aoai_core).
target_sources(aoai_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/normalize.c
  ${CMAKE_CURRENT_LIST_DIR}/litset.c
  ${CMAKE_CURRENT_LIST_DIR}/detect.c
  ${CMAKE_CURRENT_LIST_DIR}/injection.c
  ${CMAKE_CURRENT_LIST_DIR}/policy_conf.c
  ${CMAKE_CURRENT_LIST_DIR}/policy_match.c
  ${CMAKE_CURRENT_LIST_DIR}/policy_request.c
  ${CMAKE_CURRENT_LIST_DIR}/policy_stream.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/policy_stage.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/content_safety.c)
