# Sources of src/util/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/json_strict.c ${CMAKE_CURRENT_LIST_DIR}/chat_chunk.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/jsonw.c ${CMAKE_CURRENT_LIST_DIR}/clock.c
  ${CMAKE_CURRENT_LIST_DIR}/growbuf.c ${CMAKE_CURRENT_LIST_DIR}/headbuf.c
  ${CMAKE_CURRENT_LIST_DIR}/uuid.c ${CMAKE_CURRENT_LIST_DIR}/json_arena.c ${CMAKE_CURRENT_LIST_DIR}/deadline.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/curl_loop.c)
