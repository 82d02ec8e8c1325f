/* The admit stage with the memory store and an injected clock: config errors naming the key, policy
 * matching (all matches), stacked limits, token reservation and reconciliation both ways, quotas
 * (403), responses (status, headers, Azure-shaped body), and reloads keeping counters. */
#include "check.h"

#include <stdlib.h>
#include <string.h>

#include "aoai_guard/json_strict.h"
#include "aoai_guard/ratelimit.h"

static long long fake_now = 1718452800000LL; /* 2024-06-15 12:00:00 UTC */

static long long fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static cJSON *parse(const char *s)
{
    ag_json_limits lim = { 64, 100000 };
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(s, strlen(s), &lim, &st, &off);
    if (!j)
        fprintf(stderr, "bad test JSON: %s at %zu: %s\n", ag_json_status_str(st), off, s);
    return j;
}

/* Parses a rate_limits section; returns 0 or -1 with the message in err. */
static int parse_cfg(const char *json, ag_limit_config *cfg, ag_conf_err *err)
{
    cJSON *j = parse(json);
    int rc = ag_limit_config_parse(j, "rate_limits", cfg, err);
    cJSON_Delete(j);
    return rc;
}

static void expect_error(const char *json, const char *msg_prefix)
{
    ag_limit_config cfg;
    ag_conf_err err = { "" };
    CHECK_INT(parse_cfg(json, &cfg, &err), -1);
    if (strncmp(err.msg, msg_prefix, strlen(msg_prefix)) != 0) {
        CHECK_STR(err.msg, msg_prefix);
    } else {
        CHECK(1);
    }
    CHECK(cfg.policies == NULL); /* cleared on error */
}

static void test_config(void)
{
    ag_limit_config cfg;
    ag_conf_err err = { "" };
    /* defaults */
    CHECK_INT(parse_cfg("{}", &cfg, &err), 0);
    CHECK_INT(cfg.store.type, AG_LIMIT_STORE_MEMORY);
    CHECK_INT(cfg.store.max_keys, 100000);
    CHECK_INT(cfg.policies->n, 0);
    ag_limit_config_clear(&cfg);

    /* the DESIGN.md example policy */
    CHECK_INT(parse_cfg("{\"store\":{\"type\":\"memory\"},\"policies\":[{\"name\":\"per-user-tpm\",\"match\":"
                        "{\"tenants\":[],\"apps\":[],\"oids\":[],\"roles\":[],\"deployments\":[\"gpt-4o\"],"
                        "\"operations\":[]},\"key\":[\"tid\",\"oid\",\"deployment\"],\"requests_per_minute\":60,"
                        "\"tokens_per_minute\":20000,\"token_quota\":{\"period\":\"day\",\"tokens\":500000},"
                        "\"default_completion_tokens\":1024}]}",
                        &cfg, &err),
              0);
    const ag_limit_policy *p = &cfg.policies->v[0];
    CHECK_STR(p->name, "per-user-tpm");
    CHECK(p->tenants == NULL); /* empty list = any */
    CHECK_STR(p->deployments[0], "gpt-4o");
    CHECK_INT(p->key_fields, AG_LIMIT_KEY_TID | AG_LIMIT_KEY_OID | AG_LIMIT_KEY_DEPLOYMENT);
    CHECK_INT(p->requests_per_minute, 60);
    CHECK_INT(p->tokens_per_minute, 20000);
    CHECK_INT(p->quota_tokens, 500000);
    CHECK_INT(p->quota_period, AG_LIMIT_PERIOD_DAY);
    ag_limit_config_clear(&cfg);

    /* redis store and its URL */
    CHECK_INT(parse_cfg("{\"store\":{\"type\":\"redis\",\"url\":\"redis://:s3cret@10.0.0.5:6380/2\","
                        "\"timeout_ms\":25,\"on_error\":\"fail_closed\",\"key_prefix\":\"x:\"}}",
                        &cfg, &err),
              0);
    CHECK_STR(cfg.store.host, "10.0.0.5");
    CHECK_INT(cfg.store.port, 6380);
    CHECK_INT(cfg.store.db, 2);
    CHECK(cfg.store.username == NULL);
    CHECK_STR(cfg.store.password, "s3cret");
    CHECK_STR(cfg.store.key_prefix, "x:");
    CHECK_INT(cfg.store.timeout_ms, 25);
    CHECK_INT(cfg.store.on_error, AG_LIMIT_FAIL_CLOSED);
    ag_limit_config cfg2;
    CHECK_INT(parse_cfg("{\"store\":{\"type\":\"redis\",\"url\":\"redis://user:p%40ss@[::1]\",\"timeout_ms\":25,"
                        "\"on_error\":\"fail_closed\",\"key_prefix\":\"x:\"}}",
                        &cfg2, &err),
              0);
    CHECK_STR(cfg2.store.host, "::1");
    CHECK_INT(cfg2.store.port, 6379);
    CHECK_STR(cfg2.store.username, "user");
    CHECK_STR(cfg2.store.password, "p@ss");
    CHECK(!ag_limit_store_config_same(&cfg.store, &cfg2.store));
    CHECK(ag_limit_store_config_same(&cfg.store, &cfg.store));
    ag_limit_config_clear(&cfg);
    ag_limit_config_clear(&cfg2);

    /* errors name the key */
    expect_error("{\"store\":{\"type\":\"memcached\"}}", "rate_limits.store.type: must be one of memory, redis");
    expect_error("{\"stores\":{}}", "rate_limits.stores: unknown key");
    expect_error("{\"store\":{\"type\":\"memory\",\"url\":\"redis://x\"}}",
                 "rate_limits.store.url: only applies to \"type\": \"redis\"");
    expect_error("{\"store\":{\"type\":\"redis\"}}", "rate_limits.store.url: is required");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"http://x\"}}", "rate_limits.store.url: must start with redis://");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"rediss://x\"}}", "rate_limits.store.url: TLS (rediss://) is not supported");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"redis://x\",\"tls\":true}}",
                 "rate_limits.store.tls: TLS to Redis is not supported");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"redis://x:99999\"}}", "rate_limits.store.url: port must be 1..65535");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"redis://:a@x\",\"password\":\"b\"}}",
                 "rate_limits.store.password: is also given in url");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"redis://x\",\"on_error\":\"ignore\"}}",
                 "rate_limits.store.on_error: must be one of fail_open, fail_closed");
    expect_error("{\"store\":{\"type\":\"redis\",\"url\":\"redis://x\",\"timeout_ms\":0}}",
                 "rate_limits.store.timeout_ms: must be an integer from 1 to 60000");
    expect_error("{\"policies\":{}}", "rate_limits.policies: must be an array");
    expect_error("{\"policies\":[{\"requests_per_minute\":1}]}", "rate_limits.policies[0].name: is required");
    expect_error("{\"policies\":[{\"name\":\"a b\",\"requests_per_minute\":1}]}", "rate_limits.policies[0].name: must be 1..64");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"burst\":5}]}",
                 "rate_limits.policies[0].burst: unknown key");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1},{\"name\":\"a\",\"tokens_per_minute\":5}]}",
                 "rate_limits.policies[1].name: \"a\" is already used by policies[0]");
    expect_error("{\"policies\":[{\"name\":\"a\"}]}", "rate_limits.policies[0]: sets no limit");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"key\":[\"tid\",\"upn\"]}]}",
                 "rate_limits.policies[0].key[1]: must be one of tid, oid, app, name, deployment, operation");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"key\":[\"oid\",\"oid\"]}]}",
                 "rate_limits.policies[0].key[1]: \"oid\" is listed twice");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":0}]}",
                 "rate_limits.policies[0].requests_per_minute: must be an integer from 1 to 1000000000");
    expect_error("{\"policies\":[{\"name\":\"a\",\"token_quota\":{\"period\":\"fortnight\",\"tokens\":5}}]}",
                 "rate_limits.policies[0].token_quota.period: must be one of hour, day, week, month, year");
    expect_error("{\"policies\":[{\"name\":\"a\",\"token_quota\":{\"period\":\"day\"}}]}",
                 "rate_limits.policies[0].token_quota.tokens: is required");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"match\":{\"users\":[]}}]}",
                 "rate_limits.policies[0].match.users: unknown key");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"match\":{\"operations\":[\"chat\"]}}]}",
                 "rate_limits.policies[0].match.operations[0]: unknown operation \"chat\"");
    expect_error("{\"policies\":[{\"name\":\"a\",\"requests_per_minute\":1,\"match\":{\"roles\":[\"\"]}}]}",
                 "rate_limits.policies[0].match.roles[0]: must not be empty");
}

static ag_identity user(const char *tid, const char *oid, const char *app, const char *roles)
{
    ag_identity id;
    memset(&id, 0, sizeof id);
    id.kind = AG_IDENTITY_USER;
    snprintf(id.tid, sizeof id.tid, "%s", tid);
    snprintf(id.oid, sizeof id.oid, "%s", oid);
    snprintf(id.app, sizeof id.app, "%s", app);
    snprintf(id.roles, sizeof id.roles, "%s", roles);
    return id;
}

#define TID "11111111-1111-1111-1111-111111111111"
#define APP "22222222-2222-2222-2222-222222222222"
#define OID_A "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
#define OID_B "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"

static void test_matching(void)
{
    ag_limit_config cfg;
    ag_conf_err err;
    CHECK_INT(parse_cfg("{\"policies\":["
                        "{\"name\":\"t\",\"requests_per_minute\":1,\"match\":{\"tenants\":[\"" TID "\"]}},"
                        "{\"name\":\"d\",\"requests_per_minute\":1,\"match\":{\"deployments\":[\"gpt-4o\"],"
                        "\"operations\":[\"chat/completions\"]}},"
                        "{\"name\":\"r\",\"requests_per_minute\":1,\"match\":{\"roles\":[\"AI.Heavy\"]}}]}",
                        &cfg, &err),
              0);
    ag_identity a = user("11111111-1111-1111-1111-111111111111", OID_A, APP, "AI.User AI.Heavy");
    ag_identity upper = user("11111111-1111-1111-1111-111111111111", OID_A, APP, "ai.heavy");
    upper.tid[0] = '1';
    const ag_limit_policy *t = &cfg.policies->v[0], *d = &cfg.policies->v[1], *r = &cfg.policies->v[2];
    CHECK(ag_limit_policy_matches(t, &a, "x", "embeddings"));
    CHECK(ag_limit_policy_matches(d, &a, "gpt-4o", "chat/completions"));
    CHECK(ag_limit_policy_matches(d, &a, "GPT-4O", "chat/completions")); /* case must not escape */
    CHECK(!ag_limit_policy_matches(d, &a, "gpt-4o-mini", "chat/completions"));
    CHECK(!ag_limit_policy_matches(d, &a, "gpt-4o", "embeddings"));
    CHECK(!ag_limit_policy_matches(d, &a, NULL, "chat/completions"));
    CHECK(ag_limit_policy_matches(r, &a, "x", "y"));
    CHECK(!ag_limit_policy_matches(r, &upper, "x", "y")); /* roles compare exactly */
    ag_identity other = user("99999999-1111-1111-1111-111111111111", OID_A, APP, "");
    CHECK(!ag_limit_policy_matches(t, &other, "x", "y"));
    ag_identity tid_upper = user("11111111-1111-1111-1111-111111111111", OID_A, APP, "");
    for (char *c = tid_upper.tid; *c; c++)
        if (*c >= 'a' && *c <= 'f')
            *c = (char)(*c - 'a' + 'A');
    CHECK(ag_limit_policy_matches(t, &tid_upper, "x", "y"));
    ag_limit_config_clear(&cfg);
}

typedef struct env {
    ag_limit_config cfg;
    ag_limit_store *store;
    ag_limiter *lim;
} env;

static void env_open(env *e, const char *json)
{
    ag_conf_err err = { "" };
    memset(e, 0, sizeof *e);
    if (parse_cfg(json, &e->cfg, &err) != 0)
        fprintf(stderr, "config: %s\n", err.msg);
    e->store = ag_limit_store_new(&e->cfg.store);
    ag_limiter_opts o = { .clock = fake_clock };
    e->lim = ag_limiter_new(e->store, &o);
}

static void env_close(env *e)
{
    ag_limiter_free(e->lim);
    ag_limit_store_free(e->store);
    ag_limit_config_clear(&e->cfg);
}

static void no_cb(ag_limit_ticket *t, const ag_limit_result *r, void *arg)
{
    (void)t;
    (void)r;
    (void)arg;
    CHECK(!"memory store must never call back");
}

/* Admits a chat request; returns the status and fills r and *t. */
static ag_limit_status admit(env *e, const ag_limit_policies *pol, const ag_identity *id, const char *deployment,
                             const char *body_json, ag_limit_result *r, ag_limit_ticket **t)
{
    cJSON *body = parse(body_json);
    ag_limit_request req = { id, deployment, "chat/completions", body };
    ag_limit_status s = ag_limiter_admit(e->lim, pol, &req, r, t, no_cb, NULL);
    cJSON_Delete(body);
    return s;
}

/* prompt 8 tokens ("hi"), max_tokens 100: reservation 108 */
#define BODY108 "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100}"

#define STACKED                                                                                         \
    "{\"policies\":["                                                                                   \
    "{\"name\":\"per-user\",\"key\":[\"tid\",\"oid\"],\"requests_per_minute\":3,\"tokens_per_minute\":1000}," \
    "{\"name\":\"per-app\",\"key\":[\"app\",\"deployment\"],\"tokens_per_minute\":1500},"               \
    "{\"name\":\"per-tenant\",\"key\":[\"tid\"],\"token_quota\":{\"period\":\"day\",\"tokens\":5000}},"   \
    "{\"name\":\"other-deployment\",\"requests_per_minute\":1,\"match\":{\"deployments\":[\"dall-e-3\"]}}]}"

static void test_reserve_and_reconcile(void)
{
    env e;
    env_open(&e, STACKED);
    CHECK(e.lim != NULL);
    if (!e.lim)
        return;
    ag_identity a = user(TID, OID_A, APP, "");
    ag_limit_result r;
    ag_limit_ticket *t = NULL;

    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t), AG_LIMIT_DONE);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    CHECK(t != NULL);
    CHECK_INT(r.estimate, 108);
    CHECK(r.has_requests && r.has_tokens && r.has_quota);
    CHECK_INT(r.limit_requests, 3);
    CHECK_INT(r.remaining_requests, 2);
    CHECK_INT(r.limit_tokens, 1000); /* the tighter of 1000 - 108 and 1500 - 108 */
    CHECK_INT(r.remaining_tokens, 892);
    CHECK_INT(r.quota_remaining, 5000 - 108);
    CHECK_INT(r.quota_reset_ms, 12 * 3600000LL);
    CHECK(!r.degraded);
    ag_limit_response resp;
    ag_limit_build_response(&r, &resp);
    CHECK_INT(resp.status, 0);
    CHECK_INT(resp.nheaders, 4);
    CHECK_STR(resp.headers[0].name, "x-ratelimit-limit-requests");
    CHECK_STR(resp.headers[0].value, "3");
    CHECK_STR(resp.headers[1].name, "x-ratelimit-remaining-requests");
    CHECK_STR(resp.headers[1].value, "2");
    CHECK_STR(resp.headers[2].name, "x-ratelimit-limit-tokens");
    CHECK_STR(resp.headers[2].value, "1000");
    CHECK_STR(resp.headers[3].name, "x-ratelimit-remaining-tokens");
    CHECK_STR(resp.headers[3].value, "892");

    /* the response used 50 tokens: 58 are refunded */
    ag_limit_finish(t, 50);
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t), AG_LIMIT_DONE);
    CHECK_INT(r.remaining_tokens, 1000 - 50 - 108);
    CHECK_INT(r.quota_remaining, 5000 - 50 - 108);
    /* this one used 400: 292 more are charged */
    ag_limit_finish(t, 400);
    ag_limit_ticket *t3 = NULL;
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t3), AG_LIMIT_DONE);
    CHECK_INT(r.remaining_tokens, 1000 - 50 - 400 - 108);
    CHECK_INT(r.remaining_requests, 0);
    /* usage unknown: the estimate stays */
    ag_limit_finish(t3, AG_LIMIT_USAGE_UNKNOWN);

    /* the 4th request of the minute: 429 from per-user's RPM, 20 s (one 60/3 interval) */
    ag_limit_ticket *t4 = (ag_limit_ticket *)&r; /* must be reset to NULL */
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t4), AG_LIMIT_DONE);
    CHECK(t4 == NULL);
    CHECK_INT(r.verdict, AG_LIMIT_RATE_LIMITED);
    CHECK_STR(r.policy, "per-user");
    CHECK_INT(r.kind, AG_LIMIT_KIND_RPM);
    CHECK_INT(r.retry_after_ms, 20000);
    CHECK_INT(r.remaining_requests, 0);
    CHECK_INT(r.remaining_tokens, 1000 - 50 - 400 - 108); /* unchanged: nothing charged */
    ag_limit_build_response(&r, &resp);
    CHECK_INT(resp.status, 429);
    CHECK_INT(resp.nheaders, 6);
    CHECK_STR(resp.headers[4].name, "retry-after");
    CHECK_STR(resp.headers[4].value, "20");
    CHECK_STR(resp.headers[5].name, "retry-after-ms");
    CHECK_STR(resp.headers[5].value, "20000");
    CHECK_STR(resp.body, "{\"error\":{\"code\":\"429\",\"message\":\"Requests exceeded the limit of 3 requests per "
                         "minute of rate-limit policy 'per-user'. Please retry after 20 seconds.\"}}");
    CHECK_INT(resp.body_len, strlen(resp.body));

    /* cancel: a request that was admitted but never forwarded gives its tokens back */
    fake_now += 20000;
    ag_limit_ticket *t5 = NULL;
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t5), AG_LIMIT_DONE);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    long long tokens_before_cancel = r.quota_remaining;
    ag_limit_cancel(t5);
    fake_now += 20000;
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o", BODY108, &r, &t5), AG_LIMIT_DONE);
    CHECK_INT(r.quota_remaining, tokens_before_cancel); /* 108 refunded, 108 taken again */
    ag_limit_finish(t5, 108);

    /* a request that can never fit: 429 too_large, no counter touched */
    ag_limit_ticket *t6 = NULL;
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o",
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1200}", &r, &t6),
              AG_LIMIT_DONE);
    CHECK(t6 == NULL);
    CHECK_INT(r.verdict, AG_LIMIT_RATE_LIMITED);
    CHECK(r.too_large);
    CHECK_STR(r.policy, "per-user");
    CHECK_INT(r.estimate, 1208);
    ag_limit_build_response(&r, &resp);
    CHECK_INT(resp.status, 429);
    CHECK_STR(resp.body, "{\"error\":{\"code\":\"429\",\"message\":\"This request needs an estimated 1208 tokens, "
                         "more than the limit of 1000 tokens per minute of rate-limit policy 'per-user'. Lower "
                         "max_tokens (or max_completion_tokens) or shorten the prompt.\"}}");

    /* no policy applies (the only one for dall-e-3 is excluded by its key fields? no: by match) */
    ag_limit_policies none = { 0, NULL };
    ag_limit_ticket *t7 = (ag_limit_ticket *)&r;
    CHECK_INT(admit(&e, &none, &a, "gpt-4o", BODY108, &r, &t7), AG_LIMIT_DONE);
    CHECK(t7 == NULL);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    CHECK(!r.has_requests && !r.has_tokens);
    ag_limit_finish(NULL, 5);
    ag_limit_cancel(NULL);

    ag_limiter_stats st;
    ag_limiter_get_stats(e.lim, &st);
    CHECK_INT(st.admitted, 6);
    CHECK_INT(st.rate_limited, 2);
    CHECK_INT(st.fallback_decisions, 0);
    env_close(&e);
}

/* Stacked limits: user B shares the app and tenant with A. When the per-app limit refuses, B's
 * per-user counters are not charged. */
static void test_stacked_atomic(void)
{
    env e;
    env_open(&e, STACKED);
    ag_identity a = user(TID, OID_A, APP, ""), b = user(TID, OID_B, APP, "");
    ag_limit_result r;
    ag_limit_ticket *t;
    /* A uses 900 of the app's 1500 tokens (request of 8 + 892) */
    CHECK_INT(admit(&e, e.cfg.policies, &a, "gpt-4o",
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":892}", &r, &t),
              AG_LIMIT_DONE);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    ag_limit_finish(t, AG_LIMIT_USAGE_UNKNOWN);
    /* B asks for 708: fits B's per-user 1000 but not the app's remaining 600 */
    CHECK_INT(admit(&e, e.cfg.policies, &b, "gpt-4o",
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":700}", &r, &t),
              AG_LIMIT_DONE);
    CHECK_INT(r.verdict, AG_LIMIT_RATE_LIMITED);
    CHECK_STR(r.policy, "per-app");
    CHECK_INT(r.retry_after_ms, 108 * 40); /* 108 tokens over at 1500/min = 40 ms each */
    /* B's own counters are intact: a full 3 requests and 1000 tokens */
    CHECK_INT(admit(&e, e.cfg.policies, &b, "gpt-4o", BODY108, &r, &t), AG_LIMIT_DONE);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    CHECK_INT(r.remaining_requests, 2);
    CHECK_INT(r.remaining_tokens, 600 - 108); /* the app is now the tightest */
    CHECK_INT(r.limit_tokens, 1500);
    CHECK_INT(r.quota_remaining, 5000 - 900 - 108); /* the tenant quota: A's 900 + this 108 */
    ag_limit_finish(t, 108);
    /* deployment is part of the app key, compared case-insensitively: "GPT-4O" is the same counter */
    CHECK_INT(admit(&e, e.cfg.policies, &b, "GPT-4O", BODY108, &r, &t), AG_LIMIT_DONE);
    CHECK_INT(r.remaining_tokens, 600 - 108 - 108);
    ag_limit_finish(t, 108);
    /* another deployment is another app counter */
    CHECK_INT(admit(&e, e.cfg.policies, &b, "gpt-4o-mini", BODY108, &r, &t), AG_LIMIT_DONE);
    CHECK_INT(r.limit_tokens, 1000); /* B's per-user is now the tightest: 1000 - 3 x 108 */
    CHECK_INT(r.remaining_tokens, 1000 - 3 * 108);
    ag_limit_finish(t, 108);
    env_close(&e);
}

static void test_quota_403(void)
{
    env e;
    env_open(&e, "{\"policies\":[{\"name\":\"monthly\",\"key\":[\"tid\"],"
                 "\"token_quota\":{\"period\":\"month\",\"tokens\":1000},\"default_completion_tokens\":100}]}");
    ag_identity a = user(TID, OID_A, APP, "");
    ag_limit_result r;
    ag_limit_ticket *t;
    fake_now = 1719791999000LL; /* 2024-06-30 23:59:59 UTC */
    /* 8 + 100 default completion = 108 per request; 9 fit in 1000 */
    int ok = 0;
    for (int i = 0; i < 12; i++) {
        admit(&e, e.cfg.policies, &a, "gpt-4o", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r, &t);
        if (r.verdict == AG_LIMIT_ADMITTED) {
            ok++;
            ag_limit_finish(t, AG_LIMIT_USAGE_UNKNOWN);
        }
    }
    CHECK_INT(ok, 9);
    CHECK_INT(r.verdict, AG_LIMIT_QUOTA_EXCEEDED);
    CHECK_INT(r.retry_after_ms, 1000);
    CHECK(!r.has_requests && !r.has_tokens);
    CHECK_INT(r.quota_remaining, 1000 - 9 * 108);
    ag_limit_response resp;
    ag_limit_build_response(&r, &resp);
    CHECK_INT(resp.status, 403);
    CHECK_INT(resp.nheaders, 2);
    CHECK_STR(resp.headers[0].value, "1");
    CHECK_STR(resp.headers[1].value, "1000");
    CHECK_STR(resp.body, "{\"error\":{\"code\":\"403\",\"message\":\"Out of token quota: policy 'monthly' allows "
                         "1000 tokens per month (UTC). The quota is replenished in 1 second.\"}}");
    /* July 1st: a new month */
    fake_now += 1000;
    admit(&e, e.cfg.policies, &a, "gpt-4o", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r, &t);
    CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
    CHECK_INT(r.quota_remaining, 1000 - 108);
    CHECK_INT(r.quota_reset_ms, 31LL * 86400000);
    /* a reconciliation landing after the window it reserved in does not touch the new one */
    ag_limit_finish(t, 1);
    env_close(&e);

    /* 503 body */
    ag_limit_result u;
    memset(&u, 0, sizeof u);
    u.verdict = AG_LIMIT_UNAVAILABLE;
    u.retry_after_ms = 1000;
    ag_limit_build_response(&u, &resp);
    CHECK_INT(resp.status, 503);
    CHECK_STR(resp.body, "{\"error\":{\"code\":\"503\",\"message\":\"The rate-limit store is unavailable. Please "
                         "retry after 1 second.\"}}");
    /* rounding of retry-after: 1001 ms -> 2 s */
    u.verdict = AG_LIMIT_RATE_LIMITED;
    u.retry_after_ms = 1001;
    snprintf(u.policy, sizeof u.policy, "p");
    ag_limit_build_response(&u, &resp);
    CHECK_STR(resp.headers[0].name, "retry-after");
    CHECK_STR(resp.headers[0].value, "2");
    CHECK_STR(resp.headers[1].value, "1001");
    CHECK_STR(ag_limit_verdict_str(AG_LIMIT_QUOTA_EXCEEDED), "quota_exceeded");
}

/* A reload builds new policy snapshots; the store and its counters stay. */
static void test_reload_keeps_counters(void)
{
    env e;
    env_open(&e, "{\"policies\":[{\"name\":\"u\",\"key\":[\"oid\"],\"requests_per_minute\":2}]}");
    fake_now = 1718452800000LL;
    ag_identity a = user(TID, OID_A, APP, "");
    ag_limit_result r;
    ag_limit_ticket *t;
    for (int i = 0; i < 2; i++) {
        admit(&e, e.cfg.policies, &a, "d", BODY108, &r, &t);
        CHECK_INT(r.verdict, AG_LIMIT_ADMITTED);
        ag_limit_finish(t, 1);
    }
    /* reload: same policy plus a new one; the old snapshot is freed (nothing refers to it) */
    ag_limit_config next;
    ag_conf_err err;
    CHECK_INT(parse_cfg("{\"policies\":[{\"name\":\"new\",\"requests_per_minute\":100},"
                        "{\"name\":\"u\",\"key\":[\"oid\"],\"requests_per_minute\":2}]}",
                        &next, &err),
              0);
    CHECK(ag_limit_store_config_same(ag_limit_store_config_of(e.store), &next.store));
    ag_limit_policies_free(e.cfg.policies);
    e.cfg.policies = next.policies;
    next.policies = NULL;
    ag_limit_config_clear(&next);
    admit(&e, e.cfg.policies, &a, "d", BODY108, &r, &t);
    CHECK_INT(r.verdict, AG_LIMIT_RATE_LIMITED); /* u's counter survived the reload */
    CHECK_STR(r.policy, "u");
    /* reload with u doubled to 4/min: the 2 requests already counted stay counted (not reset) */
    CHECK_INT(parse_cfg("{\"policies\":[{\"name\":\"u\",\"key\":[\"oid\"],\"requests_per_minute\":4}]}", &next, &err), 0);
    ag_limit_policies_free(e.cfg.policies);
    e.cfg.policies = next.policies;
    next.policies = NULL;
    ag_limit_config_clear(&next);
    int ok = 0;
    for (int i = 0; i < 5; i++) {
        admit(&e, e.cfg.policies, &a, "d", BODY108, &r, &t);
        if (r.verdict == AG_LIMIT_ADMITTED) {
            ok++;
            ag_limit_finish(t, 1);
        }
    }
    CHECK_INT(ok, 2); /* 2 of 4 used before the reload: 2 left, not 4 */
    env_close(&e);
}

/* Counter keys come from a per-limiter memo after their first digest. 100 callers (more than the
 * memo's slots, so slots are shared and overwritten) are admitted in an interleaved order, each
 * as often as its number says; every caller's counter must then show exactly its own requests.
 * Callers whose names make a preimage too long for the memo take the digest every time and must
 * keep their counters too. */
static void test_key_memo(void)
{
    env e;
    env_open(&e, "{\"policies\":[{\"name\":\"per-user\",\"key\":[\"tid\",\"oid\"],\"requests_per_minute\":50},"
                 "{\"name\":\"per-name\",\"key\":[\"name\"],\"requests_per_minute\":50}]}");
    CHECK(e.lim != NULL);
    if (!e.lim)
        return;
    enum { CALLERS = 100 };
    static ag_identity ids[CALLERS];
    for (int k = 0; k < CALLERS; k++) {
        char oid[40];
        snprintf(oid, sizeof oid, "%08x-aaaa-aaaa-aaaa-aaaaaaaaaaaa", (unsigned)k);
        ids[k] = user(TID, oid, APP, "");
        /* every third caller: a 200-character name, so that its per-name key is digested each time */
        memset(ids[k].name, 'a' + k % 26, k % 3 == 0 ? 200 : 10);
    }
    int sent[CALLERS] = {0}, wrong = 0;
    for (int round = 0; round < 8; round++)
        for (int k = 0; k < CALLERS; k++) {
            int c = (k * 37 + round * 11) % CALLERS;
            if (sent[c] >= 1 + c % 7)
                continue;
            ag_limit_result r;
            ag_limit_ticket *t = NULL;
            if (admit(&e, e.cfg.policies, &ids[c], "gpt-4o", BODY108, &r, &t) != AG_LIMIT_DONE ||
                r.verdict != AG_LIMIT_ADMITTED)
                wrong++;
            sent[c]++;
            ag_limit_finish(t, 0);
        }
    /* one more each: its remaining count tells how many of this caller's requests its counter saw
     * (per-user and per-name; callers sharing a name share the per-name counter, so compare the
     * tighter of the two with what per-user alone must say) */
    for (int c = 0; c < CALLERS; c++) {
        ag_limit_result r;
        ag_limit_ticket *t = NULL;
        admit(&e, e.cfg.policies, &ids[c], "gpt-4o", BODY108, &r, &t);
        int same_name = 0;
        for (int o = 0; o < CALLERS; o++)
            if (strcmp(ids[o].name, ids[c].name) == 0)
                same_name += sent[o];
        long long want = 50 - 1 - (same_name > sent[c] ? same_name : sent[c]);
        if (!r.has_requests || r.remaining_requests != want)
            wrong++;
        sent[c]++;
        ag_limit_finish(t, 0);
    }
    CHECK_INT(wrong, 0);
    env_close(&e);
}

int main(void)
{
    test_config();
    test_matching();
    test_reserve_and_reconcile();
    test_stacked_atomic();
    test_quota_403();
    test_reload_keeps_counters();
    test_key_memo();
    return CHECK_DONE();
}
