/* Routing of Azure OpenAI data-plane paths: which deployment and operation a request is for. */
#ifndef AOAI_GUARD_ROUTE_H
#define AOAI_GUARD_ROUTE_H

#include <stddef.h>

#include "aoai_guard/request.h"

/* Classifies a path (without query) into r: fills kind, deployment (for /deployments/ paths),
 * operation and json_body. Returns 0, or the HTTP status to answer (400 bad path, 404 unknown,
 * 405 wrong method). Pure: no I/O. */
int ag_route_classify(const char *path, size_t len, const char *method, const char *const *allow_paths,
                      ag_route *out);

/* Pipeline stage: routes the request or answers 400/404/405 in Azure's error shape. */
ag_stage_result ag_route_stage(ag_request *r);

/* For v1 and Responses routes, takes the deployment from the body's "model" (400 when missing or
 * invalid). Returns 0, or -1 after answering. */
int ag_route_take_model(ag_request *r);

/* True when s is a plausible deployment name: 1-64 of [A-Za-z0-9._-]. */
bool ag_route_deployment_ok(const char *s, size_t n);

#endif
