# Sources of src/limit/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/limit_counter.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/limit_store.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/limit_redis.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/token_estimate.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/ratelimit_config.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/ratelimit.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/limit_stage.c)
