# Sources of src/server/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/http.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/conn.c ${CMAKE_CURRENT_LIST_DIR}/request.c
  ${CMAKE_CURRENT_LIST_DIR}/pipeline.c ${CMAKE_CURRENT_LIST_DIR}/sendq.c ${CMAKE_CURRENT_LIST_DIR}/reader.c
  ${CMAKE_CURRENT_LIST_DIR}/event_mem.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/worker.c ${CMAKE_CURRENT_LIST_DIR}/runtime.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/services.c)
