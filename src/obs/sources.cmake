# Sources of src/obs/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/log.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/metrics.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/request_metrics.c)
