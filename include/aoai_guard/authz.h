/* Authorization: which authenticated identity may call which deployment (auth.rules, auth.api_keys).
 *
 * A rule matches an identity when every requirement it states holds: any-of its roles is in the `roles`
 * claim, any-of its scopes is in `scp`, the client app (azp/appid) is one of its apps, and the identity
 * type (app iff idtyp == "app", else the no-scp heuristic) fits. A request is permitted when a matching
 * rule lists the deployment (or "*"). No rules at all: every valid token may call every deployment.
 * API-key identities are authorized by their key's own deployments list; mode none permits everything.
 * Pure functions over immutable data: any thread, no allocation. */
#ifndef AOAI_GUARD_AUTHZ_H
#define AOAI_GUARD_AUTHZ_H

#include <stdbool.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/auth_config.h"
#include "aoai_guard/identity.h"

/* True when the identity satisfies every requirement of the rule (deployments not considered). */
bool ag_authz_rule_matches(const ag_auth_rule *rule, const ag_identity *id);

/* AG_AUTH_OK when id may call deployment (NULL or "": a route that names no deployment, permitted
 * when any rule matches the identity), else AG_AUTH_FORBIDDEN with res (may be NULL) set to status 403
 * and a log line naming the deployment and the identity. */
ag_auth_code ag_authz_check(const ag_auth_config *cfg, const ag_identity *id, const char *deployment,
                            ag_auth_result *res);

#endif
