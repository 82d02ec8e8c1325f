/* The authenticate and authorize pipeline stages (Entra ID bearer tokens or inbound API keys).
 *
 * authenticate runs when the request head is in, before the body is read: a caller without a valid
 * credential never makes the gateway buffer a body. A token signed by a key we do not know yet parks
 * the request until the JWKS manager finishes a refetch (at most one per unknown_kid_refetch_s), then
 * validates it once more. authorize runs after the body is parsed, when the deployment is known for
 * every API shape (the v1 and Responses APIs name it in the body). */
#ifndef AOAI_GUARD_AUTH_STAGE_H
#define AOAI_GUARD_AUTH_STAGE_H

#include "aoai_guard/request.h"
#include "aoai_guard/worker.h"

/* Per-worker state: the token cache and the held key set. 0 or -1. */
int ag_auth_stage_worker_init(ag_worker *w);
void ag_auth_stage_worker_free(ag_worker *w);

ag_stage_result ag_auth_stage_authenticate(ag_request *req);
ag_stage_result ag_auth_stage_authorize(ag_request *req);

/* Worker message: a JWKS round ended; parked requests are validated again. */
void ag_auth_stage_keys_round(ag_worker *w, void *unused);

#endif
