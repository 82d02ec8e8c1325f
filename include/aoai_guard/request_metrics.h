/* Per-request metrics, recorded in the worker's own shard of the registry when a request ends. */
#ifndef AOAI_GUARD_REQUEST_METRICS_H
#define AOAI_GUARD_REQUEST_METRICS_H

#include "aoai_guard/request.h"

/* Counts the request, its duration, the upstream time to first byte and the tokens. */
void ag_request_metrics_done(const ag_request *req);
/* +1 / -1 on the open-connections gauge of worker w. */
void ag_request_metrics_connection(struct ag_worker *w, int delta);

#endif
