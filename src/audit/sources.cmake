# Sources of src/audit/ (added to aoai_core).
target_sources(aoai_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/audit_record.c
  ${CMAKE_CURRENT_LIST_DIR}/audit_queue.c
  ${CMAKE_CURRENT_LIST_DIR}/spool.c
  ${CMAKE_CURRENT_LIST_DIR}/audit_batch.c
  ${CMAKE_CURRENT_LIST_DIR}/audit_sink.c
  ${CMAKE_CURRENT_LIST_DIR}/audit_config.c
  ${CMAKE_CURRENT_LIST_DIR}/audit_monitor.c
  ${CMAKE_CURRENT_LIST_DIR}/audit.c)
target_sources(aoai_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/audit_stage.c)
