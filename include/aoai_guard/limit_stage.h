/* The admit pipeline stage for rate limits and token quotas, and the reconciliation at the end.
 *
 * admit reserves the request's estimated tokens against every matching policy (all must admit);
 * a refusal is answered with 429 / 403 / 503 in Azure's error shape and nothing is forwarded.
 * With the Redis store the decision may arrive later on the worker's loop (the request waits).
 * At the end of the request the reservation is reconciled with the usage Azure reported, or
 * refunded when the request was never forwarded. */
#ifndef AOAI_GUARD_LIMIT_STAGE_H
#define AOAI_GUARD_LIMIT_STAGE_H

#include "aoai_guard/request.h"
#include "aoai_guard/worker.h"

/* Per-worker limiter (a client of the shared store). 0 or -1. */
int ag_limit_stage_worker_init(ag_worker *w);
void ag_limit_stage_worker_free(ag_worker *w);

ag_stage_result ag_limit_stage_admit(ag_request *req);
/* End of the request: charge the real usage (or keep the estimate), or refund if not forwarded. */
void ag_limit_stage_finish(ag_request *req);
/* The request is being freed without finishing: cancel any pending decision or reservation. */
void ag_limit_stage_abandon(ag_request *req);

#endif
