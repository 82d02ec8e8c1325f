/* The inspect pipeline stage: the prompt policy (detectors, rules, constraints) applied to the
 * parsed request body before anything reaches Azure. A block answers 400 in Azure's content-filter
 * shape; a redaction forwards the policy's re-serialised body; every decision (rule, action, span
 * count; never the matched text) goes to the access log, the metrics and the audit record. */
#ifndef AOAI_GUARD_POLICY_STAGE_H
#define AOAI_GUARD_POLICY_STAGE_H

#include "aoai_guard/request.h"
#include "aoai_guard/worker.h"

/* Per-worker scratch space for matching. 0 or -1. */
int ag_policy_stage_worker_init(ag_worker *w);
void ag_policy_stage_worker_free(ag_worker *w);

ag_stage_result ag_policy_stage_inspect(ag_request *req);

#endif
