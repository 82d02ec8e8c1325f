# Sources of src/config/ (added to aoai_core).
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/confparse.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/config.c)
