# Integration tests: python3 scripts that start build/aoai-guard against the stand-ins on 127.0.0.1.
set(AG_INTEGRATION_ENV
  "AG_BIN=$<TARGET_FILE:aoai-guard>"
  "AG_FAKE_AOAI=$<TARGET_FILE:fake_aoai>"
  "AG_FAKE_ENTRA=$<TARGET_FILE:fake_entra>"
  "AG_MINT_TOKEN=$<TARGET_FILE:mint_token>"
  "AG_FAKE_IDENTITY=$<TARGET_FILE:fake_identity>"
  "AG_FAKE_MONITOR=$<TARGET_FILE:fake_monitor>"
  "AG_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
  "PYTHONDONTWRITEBYTECODE=1")

# ag_integration_test(NAME): tests/integration/test_NAME.py run with unittest.
function(ag_integration_test name)
  add_test(NAME integration.${name}
    COMMAND python3 -m unittest -v test_${name}
    WORKING_DIRECTORY ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  set_tests_properties(integration.${name} PROPERTIES LABELS integration TIMEOUT 600
    ENVIRONMENT "${AG_INTEGRATION_ENV}")
endfunction()

ag_integration_test(data_path)
ag_integration_test(sdk)
ag_integration_test(auth)
ag_integration_test(limits)
ag_integration_test(audit)
ag_integration_test(metrics)
ag_integration_test(policy)
ag_integration_test(hostile)
ag_integration_test(secrets)
ag_integration_test(soak)
# The soak measures the gateway's memory and latency: it runs alone, not beside the fuzzers.
set_tests_properties(integration.soak PROPERTIES RUN_SERIAL TRUE)
