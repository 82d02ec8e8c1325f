/* Authorization rules (see authz.h). */
#include "aoai_guard/authz.h"

#include <stdio.h>
#include <string.h>

static bool any_in_list(char *const *words, const char *list)
{
    for (size_t i = 0; words && words[i]; i++)
        if (ag_identity_list_has(list, words[i]))
            return true;
    return false;
}

/* A request whose deployment is not known (a multipart v1 body, an allow-listed path) is granted
 * only by a rule or key that grants every deployment: an unknown deployment must never slip past
 * a list. */
static bool deployment_listed(char *const *list, bool all, const char *deployment)
{
    if (all)
        return true;
    if (!deployment || !deployment[0])
        return false;
    for (size_t i = 0; list && list[i]; i++)
        if (strcmp(list[i], deployment) == 0)
            return true;
    return false;
}

bool ag_authz_rule_matches(const ag_auth_rule *rule, const ag_identity *id)
{
    if (id->kind != AG_IDENTITY_APP && id->kind != AG_IDENTITY_USER)
        return false;
    if (rule->identity_type == AG_IDTYPE_APP && id->kind != AG_IDENTITY_APP)
        return false;
    if (rule->identity_type == AG_IDTYPE_USER && id->kind != AG_IDENTITY_USER)
        return false;
    if (rule->nroles && !any_in_list(rule->roles, id->roles))
        return false;
    if (rule->nscopes && !any_in_list(rule->scopes, id->scp))
        return false;
    if (rule->napps) {
        bool found = false;
        for (size_t i = 0; i < rule->napps && !found; i++)
            found = id->app[0] && strcmp(rule->apps[i], id->app) == 0;
        if (!found)
            return false;
    }
    return true;
}

static ag_auth_code forbid(ag_auth_result *res, const ag_identity *id, const char *deployment, const char *why)
{
    if (res) {
        res->code = AG_AUTH_FORBIDDEN;
        res->status = ag_auth_code_status(AG_AUTH_FORBIDDEN);
        res->cached = false;
        res->refresh_keys = false;
        snprintf(res->log, sizeof res->log, "%s: %s for deployment \"%.64s\" (%s tid=%s oid=%s app=%s name=%.64s)",
                 ag_auth_code_str(AG_AUTH_FORBIDDEN), why, deployment ? deployment : "",
                 ag_identity_kind_str(id->kind), id->tid, id->oid, id->app, id->name);
    }
    return AG_AUTH_FORBIDDEN;
}

ag_auth_code ag_authz_check(const ag_auth_config *cfg, const ag_identity *id, const char *deployment,
                            ag_auth_result *res)
{
    if (res) {
        res->code = AG_AUTH_OK;
        res->status = 200;
        res->log[0] = '\0';
    }
    if (cfg->mode == AG_AUTH_MODE_NONE)
        return AG_AUTH_OK;
    if (id->kind == AG_IDENTITY_API_KEY) {
        if (cfg->mode != AG_AUTH_MODE_API_KEY)
            return forbid(res, id, deployment, "api-key identity outside api_key mode");
        for (size_t i = 0; i < cfg->napi_keys; i++) {
            const ag_auth_api_key *k = &cfg->api_keys[i];
            if (strcmp(k->name, id->name) == 0)
                return deployment_listed(k->deployments, k->all_deployments, deployment)
                           ? AG_AUTH_OK
                           : forbid(res, id, deployment, "api key not granted");
        }
        return forbid(res, id, deployment, "unknown api key identity");
    }
    if (cfg->mode != AG_AUTH_MODE_ENTRA || (id->kind != AG_IDENTITY_APP && id->kind != AG_IDENTITY_USER))
        return forbid(res, id, deployment, "identity kind does not fit the auth mode");
    if (cfg->nrules == 0)
        return AG_AUTH_OK;
    bool matched = false;
    for (size_t i = 0; i < cfg->nrules; i++) {
        const ag_auth_rule *r = &cfg->rules[i];
        if (!ag_authz_rule_matches(r, id))
            continue;
        matched = true;
        if (deployment_listed(r->deployments, r->all_deployments, deployment))
            return AG_AUTH_OK;
    }
    return forbid(res, id, deployment, matched ? "matching rules do not list it" : "no rule matches the identity");
}
