/* The auth configuration (auth_config.h), authorization rules (authz.h) and inbound API keys. */
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/auth.h"
#include "aoai_guard/authz.h"
#include "auth_fixture.h"
#include "check.h"

#define BASE "\"tenants\":[\"" T1 "\"],\"audiences\":[\"" AUD "\"]"

/* Parses json as the auth section; returns the error message ("" on success). */
static const char *parse_err(const char *json)
{
    static ag_conf_err err;
    ag_auth_config cfg;
    cJSON *j = cJSON_Parse(json);
    if (!j)
        return "(test JSON does not parse)";
    err.msg[0] = '\0';
    if (ag_auth_config_parse(j, "auth", &cfg, &err) == 0)
        ag_auth_config_free(&cfg);
    cJSON_Delete(j);
    return err.msg;
}

static ag_identity app_id(const char *app, const char *roles)
{
    ag_identity id;
    memset(&id, 0, sizeof id);
    id.kind = AG_IDENTITY_APP;
    snprintf(id.tid, sizeof id.tid, "%s", T1);
    snprintf(id.app, sizeof id.app, "%s", app);
    snprintf(id.roles, sizeof id.roles, "%s", roles);
    return id;
}

static ag_identity user_id(const char *scp, const char *roles)
{
    ag_identity id = app_id(APP1, roles);
    id.kind = AG_IDENTITY_USER;
    snprintf(id.scp, sizeof id.scp, "%s", scp);
    return id;
}

static void test_config(void)
{
    ag_auth_config cfg;
    /* Defaults. */
    fx_config("{" BASE "}", &cfg);
    CHECK_INT(cfg.mode, AG_AUTH_MODE_ENTRA);
    CHECK_STR(cfg.authority_host, "https://login.microsoftonline.com");
    CHECK_INT(cfg.clock_skew_s, 300);
    CHECK_INT(cfg.versions, AG_TOKEN_V1 | AG_TOKEN_V2);
    CHECK_INT(cfg.algorithms, AG_ALG_RS256);
    CHECK_INT(cfg.max_token_bytes, 8192);
    CHECK_INT(cfg.token_cache_size, 10000);
    CHECK_INT(cfg.jwks_refresh_s, 3600);
    CHECK_INT(cfg.unknown_kid_refetch_s, 300);
    CHECK(cfg.jwks_uri == NULL && cfg.ca_file == NULL && cfg.nrules == 0 && !cfg.audience_trailing_slash);
    ag_auth_config_free(&cfg);
    /* Everything set; GUIDs lowercased, authority trailing '/' stripped (AKS gives it with one). */
    fx_config("{\"mode\":\"entra\",\"authority_host\":\"http://127.0.0.1:8443/\",\"tenants\":"
              "[\"11111111-1111-4111-8111-11111111111A\"],\"audiences\":[\"a\",\"b\"],\"jwks_uri\":"
              "\"https://keys.example/k\",\"clock_skew_s\":60,\"accepted_token_versions\":[\"2.0\"],\"algorithms\":"
              "[\"RS256\",\"PS256\"],\"max_token_bytes\":4096,\"token_cache_size\":0,\"jwks_refresh_s\":600,"
              "\"unknown_kid_refetch_s\":5,\"ca_file\":\"/etc/ca.pem\",\"accept_audience_trailing_slash\":true,"
              "\"rules\":[{\"roles\":[\"r\"],\"scopes\":[\"s\"],\"apps\":[\"A1A1A1A1-0000-4000-8000-000000000001\"],"
              "\"identity_type\":\"user\",\"deployments\":[\"d\",\"*\"]}]}",
              &cfg);
    CHECK_STR(cfg.authority_host, "http://127.0.0.1:8443");
    CHECK_STR(cfg.tenants[0], "11111111-1111-4111-8111-11111111111a");
    CHECK_INT(cfg.naudiences, 2);
    CHECK_STR(cfg.jwks_uri, "https://keys.example/k");
    CHECK_INT(cfg.versions, AG_TOKEN_V2);
    CHECK_INT(cfg.algorithms, AG_ALG_RS256 | AG_ALG_PS256);
    CHECK_INT(cfg.token_cache_size, 0);
    CHECK_INT(cfg.nrules, 1);
    CHECK_STR(cfg.rules[0].apps[0], APP1);
    CHECK_INT(cfg.rules[0].identity_type, AG_IDTYPE_USER);
    CHECK(cfg.rules[0].all_deployments);
    ag_auth_config_free(&cfg);
    /* No section: mode none. */
    CHECK_INT(ag_auth_config_parse(NULL, "auth", &cfg, &(ag_conf_err){{0}}), 0);
    CHECK_INT(cfg.mode, AG_AUTH_MODE_NONE);
    ag_auth_config_free(&cfg);

    /* Errors name the exact key. */
    CHECK(strncmp(parse_err("{" BASE ",\"bogus\":1}"), "auth.bogus: unknown key (allowed here: mode,", 43) == 0);
    CHECK_STR(parse_err("{" BASE ",\"mode\":\"basic\"}"), "auth.mode: must be one of entra, api_key, none");
    CHECK_STR(parse_err("{\"audiences\":[\"a\"]}"),
              "auth.tenants: is required (tenant GUIDs) when mode is \"entra\"");
    CHECK_STR(parse_err("{\"tenants\":[\"" T1 "\"]}"), "auth.audiences: is required when mode is \"entra\"");
    CHECK_STR(parse_err("{\"tenants\":[\"contoso.com\"],\"audiences\":[\"a\"]}"),
              "auth.tenants[0]: must be a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    CHECK_STR(parse_err("{" BASE ",\"clock_skew_s\":601}"), "auth.clock_skew_s: must be an integer from 0 to 600");
    CHECK_STR(parse_err("{" BASE ",\"clock_skew_s\":\"300\"}"), "auth.clock_skew_s: must be an integer");
    CHECK_STR(parse_err("{" BASE ",\"max_token_bytes\":100000}"),
              "auth.max_token_bytes: must be an integer from 512 to 16384");
    CHECK_STR(parse_err("{" BASE ",\"algorithms\":[\"RS256\",\"HS256\"]}"),
              "auth.algorithms[1]: must be one of RS256, RS384, RS512, PS256");
    CHECK_STR(parse_err("{" BASE ",\"algorithms\":[\"none\"]}"),
              "auth.algorithms[0]: must be one of RS256, RS384, RS512, PS256");
    CHECK_STR(parse_err("{" BASE ",\"algorithms\":[]}"), "auth.algorithms: must not be empty");
    CHECK_STR(parse_err("{" BASE ",\"accepted_token_versions\":[\"3.0\"]}"),
              "auth.accepted_token_versions[0]: must be \"1.0\" or \"2.0\"");
    CHECK(strncmp(parse_err("{" BASE ",\"authority_host\":\"http://login.example\"}"),
                  "auth.authority_host: must be an https:// URL", 43) == 0);
    CHECK(strncmp(parse_err("{" BASE ",\"jwks_uri\":\"https://user@keys.example/k\"}"), "auth.jwks_uri: must be", 22) == 0);
    CHECK_STR(parse_err("{" BASE ",\"rules\":[{\"deployments\":[\"a\"]},{\"identity_type\":\"robot\",\"deployments\":[\"a\"]}]}"),
              "auth.rules[1].identity_type: must be one of any, app, user");
    CHECK_STR(parse_err("{" BASE ",\"rules\":[{\"roles\":[\"x\"]}]}"), "auth.rules[0].deployments: is required");
    CHECK_STR(parse_err("{" BASE ",\"rules\":[{\"roles\":[\"a b\"],\"deployments\":[\"d\"]}]}"),
              "auth.rules[0].roles[0]: must be non-empty, without spaces or control characters");
    CHECK_STR(parse_err("{" BASE ",\"rules\":[{\"apps\":[\"x\"],\"deployments\":[\"d\"]}]}"),
              "auth.rules[0].apps[0]: must be a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    CHECK_STR(parse_err("{" BASE ",\"rules\":[{\"deployments\":[\"d\"],\"deployment\":[\"e\"]}]}"),
              "auth.rules[0].deployment: unknown key (allowed here: roles, scopes, apps, identity_type, deployments)");
    CHECK_STR(parse_err("{" BASE ",\"rules\":{}}"), "auth.rules: must be an array of objects");
    /* API keys. */
    CHECK_STR(parse_err("{\"mode\":\"api_key\"}"), "auth.api_keys: is required when mode is \"api_key\"");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a\",\"key\":\"short\",\"deployments\":[\"*\"]}]}"),
              "auth.api_keys[0].key: must be at least 16 characters");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a\",\"key\":\"${BATCH_KEY}xxxxxxxxxxxx\","
                        "\"deployments\":[\"*\"]}]}"),
              "auth.api_keys[0].key: holds an unexpanded ${NAME} reference");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a\",\"key\":\"0123456789abcdef\","
                        "\"deployments\":[\"*\"]},{\"name\":\"a\",\"key\":\"0123456789abcdeg\",\"deployments\":[\"*\"]}]}"),
              "auth.api_keys[1].name: duplicate name \"a\"");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a\",\"key\":\"0123456789abcdef\","
                        "\"deployments\":[\"*\"]},{\"name\":\"b\",\"key\":\"0123456789abcdef\",\"deployments\":[\"*\"]}]}"),
              "auth.api_keys[1].key: same key as api_keys[0]");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a b\",\"key\":\"0123456789abcdef\","
                        "\"deployments\":[\"*\"]}]}"),
              "auth.api_keys[0].name: may contain only letters, digits, '-', '_' and '.'");
    CHECK_STR(parse_err("{\"mode\":\"api_key\",\"api_keys\":[{\"name\":\"a\",\"key\":\"0123456789abcdef\"}]}"),
              "auth.api_keys[0].deployments: is required");
    CHECK_STR(parse_err("{\"mode\":\"none\"}"), "");

    CHECK(ag_auth_url_allowed("https://login.microsoftonline.com"));
    CHECK(ag_auth_url_allowed("http://127.0.0.1:1234/x"));
    CHECK(ag_auth_url_allowed("http://[::1]:1234/x"));
    CHECK(ag_auth_url_allowed("http://localhost/x"));
    CHECK(!ag_auth_url_allowed("http://127.0.0.1.evil.example/x"));
    CHECK(!ag_auth_url_allowed("http://localhost.evil/x"));
    CHECK(!ag_auth_url_allowed("ftp://127.0.0.1/"));
    CHECK(!ag_auth_url_allowed("https://a.example/x?y=1"));
    CHECK(!ag_auth_url_allowed("https://"));
    CHECK(ag_auth_is_guid(T1, 36));
    CHECK(!ag_auth_is_guid("11111111-1111-4111-8111-11111111111A", 36));
    CHECK(!ag_auth_is_guid("11111111111141118111111111111111", 32));
}

static void test_rules(void)
{
    ag_auth_config cfg;
    fx_config("{" BASE ",\"rules\":["
              "{\"roles\":[\"analytics\"],\"deployments\":[\"gpt-4o-mini\"]},"
              "{\"roles\":[\"AI.Admin\"],\"deployments\":[\"*\"]},"
              "{\"apps\":[\"" APP2 "\"],\"deployments\":[\"gpt-4o\"]},"
              "{\"scopes\":[\"Chat.Use\"],\"identity_type\":\"user\",\"deployments\":[\"gpt-4o\"]},"
              "{\"roles\":[\"batch\"],\"identity_type\":\"app\",\"deployments\":[\"embeddings\",\"gpt-4o-mini\"]}]}",
              &cfg);
    ag_auth_result res;
    ag_identity id = app_id(APP1, "analytics");
    /* The analytics role may call gpt-4o-mini but not gpt-4o. */
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o-mini", &res), AG_AUTH_OK);
    CHECK_INT(res.status, 200);
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    CHECK_INT(res.status, 403);
    CHECK_STR(res.log, "forbidden: matching rules do not list it for deployment \"gpt-4o\" (app tid=" T1
                       " oid= app=" APP1 " name=)");
    CHECK_INT(ag_authz_check(&cfg, &id, "GPT-4O-MINI", &res), AG_AUTH_FORBIDDEN); /* exact names */
    /* Admin role: everything. */
    id = app_id(APP1, "x AI.Admin");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    CHECK_INT(ag_authz_check(&cfg, &id, "anything", &res), AG_AUTH_OK);
    /* A role is a whole word: "AI.Adm" or "analytics2" grant nothing. */
    id = app_id(APP1, "AI.Adm analytics2");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o-mini", &res), AG_AUTH_FORBIDDEN);
    CHECK_STR(res.log, "forbidden: no rule matches the identity for deployment \"gpt-4o-mini\" (app tid=" T1
                       " oid= app=" APP1 " name=)");
    /* App allow-list. */
    id = app_id(APP2, "");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o-mini", &res), AG_AUTH_FORBIDDEN);
    id = app_id("a3a3a3a3-0000-4000-8000-000000000003", "");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    /* Delegated scope, user only. */
    id = user_id("openid Chat.Use", "");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    id = user_id("openid Chat.User", "");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    id = app_id(APP1, "");
    snprintf(id.scp, sizeof id.scp, "Chat.Use");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN); /* app with the scope: no */
    /* Identity type app. */
    id = app_id(APP1, "batch");
    CHECK_INT(ag_authz_check(&cfg, &id, "embeddings", &res), AG_AUTH_OK);
    id = user_id("", "batch");
    CHECK_INT(ag_authz_check(&cfg, &id, "embeddings", &res), AG_AUTH_FORBIDDEN);
    /* A route naming no deployment (multipart v1 body, allow-listed path): only a rule granting
     * every deployment lets it through, so an unknown deployment cannot slip past a list. */
    id = app_id(APP1, "batch");
    CHECK_INT(ag_authz_check(&cfg, &id, NULL, &res), AG_AUTH_FORBIDDEN);
    CHECK_INT(ag_authz_check(&cfg, &id, "", &res), AG_AUTH_FORBIDDEN);
    id = app_id(APP1, "nothing");
    CHECK_INT(ag_authz_check(&cfg, &id, "", &res), AG_AUTH_FORBIDDEN);
    /* Identities of another kind never match entra rules. */
    id = app_id(APP1, "AI.Admin");
    id.kind = AG_IDENTITY_ANONYMOUS;
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    id.kind = AG_IDENTITY_API_KEY;
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", NULL), AG_AUTH_FORBIDDEN);
    ag_auth_config_free(&cfg);

    /* No rules: any valid token may call any deployment. */
    fx_config("{" BASE "}", &cfg);
    id = user_id("", "");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    ag_auth_config_free(&cfg);
}

static void test_api_keys(void)
{
    ag_auth_config cfg;
    fx_config("{\"mode\":\"api_key\",\"api_keys\":["
              "{\"name\":\"batch-job\",\"key\":\"k-0123456789abcdef\",\"deployments\":[\"gpt-4o-mini\"]},"
              "{\"name\":\"ops\",\"key\":\"zzzzzzzzzzzzzzzzzzzzzzzz\",\"deployments\":[\"*\"]}]}",
              &cfg);
    ag_identity id;
    ag_auth_result res;
    ag_auth_input in = {.api_key = "k-0123456789abcdef", .api_key_len = 18};
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK_INT(id.kind, AG_IDENTITY_API_KEY);
    CHECK_STR(id.name, "batch-job");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o-mini", &res), AG_AUTH_OK);
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    in.api_key = "zzzzzzzzzzzzzzzzzzzzzzzz";
    in.api_key_len = 24;
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK_STR(id.name, "ops");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    /* Near misses: last byte, prefix, extension, empty, missing, embedded NUL (length counts). */
    const char *near[] = {"k-0123456789abcdeg", "k-0123456789abcde", "k-0123456789abcdefX", "K-0123456789ABCDEF"};
    for (size_t i = 0; i < 4; i++) {
        in.api_key = near[i];
        in.api_key_len = strlen(near[i]);
        CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_BAD_API_KEY);
        CHECK_INT(res.status, 401);
        CHECK_STR(id.name, "");
    }
    in.api_key = "k-0123456789abcdef\0";
    in.api_key_len = 19;
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_BAD_API_KEY);
    in.api_key = "";
    in.api_key_len = 0;
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_BAD_API_KEY);
    in.api_key = NULL;
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_NO_CREDENTIALS);
    /* A Bearer header is not an API key in this mode. */
    in.authorization = "Bearer k-0123456789abcdef";
    in.authorization_len = strlen(in.authorization);
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_NO_CREDENTIALS);
    char buf[256];
    CHECK_INT(ag_auth_www_authenticate(&cfg, AG_AUTH_BAD_API_KEY, NULL, buf, sizeof buf), 0);
    ag_auth_error_body(AG_AUTH_BAD_API_KEY, buf, sizeof buf);
    CHECK_STR(buf, "{\"error\":{\"code\":\"401\",\"message\":\"Access denied due to an invalid API key\"}}");
    /* An entra identity is not accepted in api_key mode. */
    id = app_id(APP1, "AI.Admin");
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_FORBIDDEN);
    ag_auth_config_free(&cfg);

    /* Mode none: anonymous, everything permitted. */
    fx_config("{\"mode\":\"none\"}", &cfg);
    in = (ag_auth_input){0};
    CHECK_INT(ag_auth_authenticate(&cfg, NULL, NULL, &in, NOW, &id, &res), AG_AUTH_OK);
    CHECK_INT(id.kind, AG_IDENTITY_ANONYMOUS);
    CHECK_INT(ag_authz_check(&cfg, &id, "gpt-4o", &res), AG_AUTH_OK);
    ag_auth_config_free(&cfg);
}

int main(void)
{
    test_config();
    test_rules();
    test_api_keys();
    return CHECK_DONE();
}
