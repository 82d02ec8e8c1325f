/* The forward stage: sends the request to an upstream over a pooled connection and streams the
 * response back. Before any byte reached the client, a connect failure, a 5xx or a 429 moves on to
 * the next upstream (honouring retry-after); afterwards a failure truncates the client response. */
#ifndef AOAI_GUARD_FORWARD_H
#define AOAI_GUARD_FORWARD_H

#include "aoai_guard/request.h"

typedef struct ag_exchange ag_exchange;

/* Pipeline stage: a streamed chat/completions or completions request that does not ask for
 * stream_options.include_usage gets it added, so the final usage is known for token accounting;
 * the extra usage chunk is then removed from what the caller receives. */
ag_stage_result ag_forward_prepare_stage(ag_request *req);

/* Pipeline stage: starts the exchange; always returns AG_STAGE_WAIT or AG_STAGE_DONE. */
ag_stage_result ag_forward_stage(ag_request *req);
/* Stops the exchange and frees it (the request is going away). */
void ag_exchange_cancel(ag_exchange *ex);
/* Frees the worker's cache of finished exchanges (at worker teardown, before its event base). */
void ag_exchange_cache_drain(struct ag_worker *w);
/* The client left: cancel the upstream at once and end the request as client_disconnected. */
void ag_exchange_client_gone(ag_exchange *ex);

struct evbuffer;
/* Appends the request head sent upstream (request line, headers, blank line) to out: hop-by-hop
 * headers, the caller's credentials and client-sent forwarding headers are dropped; Host,
 * Content-Length, x-request-id and the upstream's own credentials (api-key, or the bearer token for
 * auth type entra) are set. Returns 0 or -1. */
int ag_forward_write_head(const ag_request *req, const ag_upstream_conf *up, size_t body_len,
                          const char *bearer, struct evbuffer *out);

#endif
