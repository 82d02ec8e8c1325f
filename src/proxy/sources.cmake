# Sources of src/proxy/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/route.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/upstream.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/sse.c ${CMAKE_CURRENT_LIST_DIR}/usage.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/forward.c ${CMAKE_CURRENT_LIST_DIR}/resp_doc.c)
