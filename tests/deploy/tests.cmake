# Deployment artefacts, checked offline (no Docker engine, no cluster): the Dockerfile against
# scripts/install-deps.sh and the built binary's shared libraries, the Kubernetes manifests in
# docker/k8s/ against each other and conf/*.json, and the strict Prometheus text parser that the
# integration tests use. Test-time needs: python3, python3-yaml, binutils (readelf), dpkg.
# (-B: no __pycache__ in the source tree.)
add_test(NAME deploy.promparse
         COMMAND python3 -B ${CMAKE_SOURCE_DIR}/tests/integration/test_promparse.py)
add_test(NAME deploy.dockerfile
         COMMAND python3 -B ${CMAKE_SOURCE_DIR}/tests/deploy/test_dockerfile.py
                 --source-dir ${CMAKE_SOURCE_DIR} --binary $<TARGET_FILE:aoai-guard>)
add_test(NAME deploy.manifests
         COMMAND python3 -B ${CMAKE_SOURCE_DIR}/tests/deploy/test_manifests.py
                 --source-dir ${CMAKE_SOURCE_DIR})
set_tests_properties(deploy.promparse deploy.dockerfile deploy.manifests
                     PROPERTIES LABELS deploy TIMEOUT 120)
