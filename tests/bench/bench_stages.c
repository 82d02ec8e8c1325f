/* Micro-benchmarks of the pipeline stages in isolation, in nanoseconds per operation.
 *
 * Cases (each checks its own result once before timing, so a broken stage fails instead of looking
 * fast):
 *   head_parse       llhttp over a typical 9-header request head, plus the ag_http_* syntax checks the
 *                    connection runs on the request line and every header (conn.c's own callbacks are
 *                    not reachable without a socket)
 *   body_parse       strict JSON parse of a small chat body (ag_json_parse_strict), as parse_body does
 *   resp_whole       cJSON over a 2 KiB Azure chat completion (1 KiB of text), as a held response was
 *   resp_held        ag_resp_doc_parse of the same: choices and object parsed, the rest stepped over
 *   jwt_uncached     ag_auth_authenticate without a token cache: base64url, strict JSON, claims, RS256
 *   jwt_cached       ag_auth_authenticate with a warm per-worker token cache: SHA-256 + lookup
 *   jwt_keepalive    as jwt_cached, the token repeated on one connection: memo comparison + lookup
 *   ratelimit_admit  ag_limiter_admit + ag_limit_finish, memory store, one RPM+TPM policy that admits
 *   audit_build      what a worker does per request: record, fields, prompt copy, 200 streamed deltas
 *   audit_serialise  what the audit thread does per record: ag_audit_record_rows (JSON row)
 *   sse_framing      ag_sse_parser over a 200-chunk chat completion stream fed in 4 KiB reads
 *   sse_usage        the same plus the gateway's usage/text pass over every event (audit on: each
 *                    chat chunk read in place, usage.c; cJSON only for the strings with escapes)
 *   policy_4k        ag_policy_inspect_request with conf/policy-enterprise.json on a 4 KiB prompt
 *                    (only when include/aoai_guard/policy.h existed at configure time)
 *
 * Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID): the other load of a shared 2-core machine does
 * not inflate them by preempting us. Each case runs batches for a CPU-time budget and reports the
 * median and the best batch, in ns per operation.
 *
 * Usage: bench_stages [--ms N] [--smoke] [--json FILE] [--policy-file PATH] [--only CASE]
 *   --ms N      CPU milliseconds per case (default 300)
 *   --only CASE run one case (e.g. under perf record)
 *   --smoke     correctness only: every case runs a handful of iterations (CTest bench.stages.smoke)
 *   --json F    also write the results as a JSON object to F */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <llhttp.h>

#include "aoai_guard/audit_record.h"
#include "aoai_guard/auth.h"
#include "aoai_guard/auth_config.h"
#include "aoai_guard/http.h"
#include "aoai_guard/json_strict.h"
#include "aoai_guard/jwks.h"
#include "aoai_guard/ratelimit.h"
#include "aoai_guard/ratelimit_config.h"
#include "aoai_guard/sse.h"
#include "aoai_guard/json_arena.h"
#include "aoai_guard/request.h"
#include "aoai_guard/resp_doc.h"
#include "aoai_guard/token_cache.h"
#include "aoai_guard/usage.h"
#include "aoai_guard/worker.h"
#include "entra_testkit.h"

#if defined(AG_BENCH_HAVE_POLICY) && AG_BENCH_HAVE_POLICY
#include "aoai_guard/policy.h"
#endif

#define TENANT "11111111-1111-4111-8111-111111111111"
#define OID "0a0a0a0a-0000-4000-8000-000000000001"
#define APP "a1a1a1a1-0000-4000-8000-000000000001"
#define AUDIENCE "api://aoai-guard"

static int failures;

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "bench_stages: check failed at line %d: %s: ", __LINE__, #cond);                 \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
            failures++;                                                                                      \
            return -1;                                                                                       \
        }                                                                                                    \
    } while (0)

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One case: op(arg) returns 0 on success; it is called `batch` times per timed batch. */
typedef int (*bench_op)(void *arg);

typedef struct result {
    const char *name;
    const char *what;
    double median_ns, best_ns;
    long iterations;
} result;

static result results[32];
static size_t nresults;
static double budget_ms = 300;
static int smoke;
static const char *only; /* --only NAME: run just this case (for a profiler) */

static int run_case(const char *name, const char *what, bench_op op, void *arg, int batch)
{
    if (only && strcmp(only, name) != 0)
        return 0;
    if (op(arg) != 0) { /* warm-up and correctness */
        fprintf(stderr, "bench_stages: %s: the operation failed\n", name);
        failures++;
        return -1;
    }
    static double samples[200000];
    size_t ns = 0;
    long iters = 0;
    double start = cpu_ns();
    double budget = smoke ? 0 : budget_ms * 1e6;
    do {
        double t0 = cpu_ns();
        for (int i = 0; i < batch; i++) {
            if (op(arg) != 0) {
                fprintf(stderr, "bench_stages: %s: the operation failed on iteration %ld\n", name, iters + i);
                failures++;
                return -1;
            }
        }
        samples[ns++] = (cpu_ns() - t0) / batch;
        iters += batch;
    } while (cpu_ns() - start < budget && ns < sizeof samples / sizeof samples[0]);
    qsort(samples, ns, sizeof samples[0], cmp_double);
    result *r = &results[nresults++];
    r->name = name;
    r->what = what;
    r->median_ns = samples[ns / 2];
    r->best_ns = samples[0];
    r->iterations = iters;
    printf("%-16s %12.0f %12.0f %10ld   %s\n", name, r->median_ns, r->best_ns, iters, what);
    fflush(stdout);
    return 0;
}

/* ---------------------------------------------------------------- request head */

static const char head[] =
    "POST /openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21 HTTP/1.1\r\n"
    "Host: aoai-guard.internal:8443\r\n"
    "User-Agent: AzureOpenAI/Python 1.51.0\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 92\r\n"
    "Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly9hb2FpLWd1YXJkIn0.c2lnbmF0dXJl\r\n"
    "x-ms-client-request-id: 6f1c2a8e-3d4b-4c5d-9e6f-7a8b9c0d1e2f\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

typedef struct head_state {
    const char *field;
    size_t field_len;
    int headers;
    int bad;
    int complete;
} head_state;

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    head_state *s = p->data;
    s->field = at;
    s->field_len = len;
    if (!ag_http_is_token(at, len, false))
        s->bad++;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    head_state *s = p->data;
    s->headers++;
    if (!ag_http_value_ok(at, len))
        s->bad++;
    if (ag_http_is_hop_by_hop(s->field, s->field_len) && ag_http_list_has(at, len, "close"))
        s->bad++;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    head_state *s = p->data;
    s->complete = 1;
    return HPE_PAUSED;
}

static llhttp_settings_t head_settings;

static int op_head(void *arg)
{
    (void)arg;
    const char *eol = strstr(head, "\r\n");
    if (ag_http_check_request_line(head, (size_t)(eol - head)) != 0)
        return -1;
    llhttp_t parser;
    head_state st = {0};
    llhttp_init(&parser, HTTP_REQUEST, &head_settings);
    parser.data = &st;
    llhttp_errno_t e = llhttp_execute(&parser, head, sizeof head - 1);
    if (e != HPE_PAUSED || !st.complete || st.headers != 9 || st.bad)
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- body parse */

static const char chat_body[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"},"
    "{\"role\":\"user\",\"content\":\"Summarise the quarterly report in three bullet points.\"}],"
    "\"temperature\":0.2,\"max_tokens\":400,\"stream\":false}";

/* A held chat completion as Azure sends it, with 1 KiB of completion text. */
static char held_resp[4096];
static size_t held_resp_len;

static void held_resp_setup(void)
{
    char text[1025];
    for (size_t i = 0; i < 1024; i++)
        text[i] = "The quarterly report shows steady growth. "[i % 42];
    text[1024] = '\0';
    int n = snprintf(held_resp, sizeof held_resp,
        "{\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},"
        "\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"},\"sexual\":{\"filtered\":false,\"severity\":"
        "\"safe\"},\"violence\":{\"filtered\":false,\"severity\":\"safe\"}},\"finish_reason\":\"stop\",\"index\":0,"
        "\"logprobs\":null,\"message\":{\"content\":\"%s\",\"refusal\":null,\"role\":\"assistant\"}}],"
        "\"created\":1795908635,\"id\":\"chatcmpl-FAKE0000000000000000000000001\",\"model\":"
        "\"gpt-4o-mini-2024-07-18\",\"object\":\"chat.completion\",\"prompt_filter_results\":[{\"prompt_index\":0,"
        "\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"},\"jailbreak\":"
        "{\"filtered\":false,\"detected\":false},\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"},"
        "\"sexual\":{\"filtered\":false,\"severity\":\"safe\"},\"violence\":{\"filtered\":false,\"severity\":"
        "\"safe\"}}}],\"system_fingerprint\":\"fp_fake0c0ffee\",\"usage\":{\"completion_tokens\":210,"
        "\"completion_tokens_details\":{\"accepted_prediction_tokens\":0,\"audio_tokens\":0,\"reasoning_tokens\":0,"
        "\"rejected_prediction_tokens\":0},\"prompt_tokens\":230,\"prompt_tokens_details\":{\"audio_tokens\":0,"
        "\"cached_tokens\":0},\"total_tokens\":440}}",
        text);
    held_resp_len = (size_t)n;
}

static int op_resp_whole(void *arg)
{
    (void)arg;
    cJSON *j = cJSON_ParseWithLength(held_resp, held_resp_len);
    if (!cJSON_GetObjectItemCaseSensitive(j, "choices"))
        return -1;
    cJSON_Delete(j);
    return 0;
}

static int op_resp_held(void *arg)
{
    (void)arg;
    ag_resp_doc d;
    ag_resp_doc_parse(&d, held_resp, held_resp_len);
    int rc = d.partial && cJSON_GetObjectItemCaseSensitive(d.root, "choices") ? 0 : -1;
    ag_resp_doc_free(&d);
    return rc;
}

static int op_body(void *arg)
{
    (void)arg;
    static const ag_json_limits limits = {.max_depth = 64, .max_nodes = 500000};
    ag_json_status st;
    size_t off;
    cJSON *j = ag_json_parse_strict(chat_body, sizeof chat_body - 1, &limits, &st, &off);
    if (!j)
        return -1;
    cJSON_Delete(j);
    return 0;
}

/* ---------------------------------------------------------------- JWT */

typedef struct jwt_ctx {
    ag_auth_config cfg;
    ag_jwks *keys;
    ag_token_cache *cache;
    ag_token_memo memo;
    char *bearer;
    long long now;
    ag_identity id;
} jwt_ctx;

static int jwt_setup(jwt_ctx *c)
{
    memset(c, 0, sizeof *c);
    const char *conf = "{\"mode\":\"entra\",\"tenants\":[\"" TENANT "\"],\"audiences\":[\"" AUDIENCE "\"],"
                       "\"rules\":[{\"roles\":[\"AI.User\"],\"deployments\":[\"*\"]}]}";
    cJSON *j = cJSON_Parse(conf);
    ag_conf_err err;
    CHECK(j && ag_auth_config_parse(j, "auth", &c->cfg, &err) == 0, "auth config: %s", j ? err.msg : "JSON");
    cJSON_Delete(j);

    EVP_PKEY *key = ag_tk_rsa_new(2048);
    CHECK(key, "RSA key");
    X509 *cert = ag_tk_self_signed(key, "bench-signing");
    CHECK(cert, "certificate");
    char *kid = ag_tk_thumbprint(cert);
    cJSON *doc = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(doc, "keys");
    cJSON_AddItemToArray(arr, ag_tk_jwk(key, cert, kid, NULL));
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    char e[256];
    c->keys = ag_jwks_parse(s, strlen(s), NULL, e, sizeof e);
    cJSON_free(s);
    CHECK(c->keys, "key set: %s", e);

    c->now = (long long)time(NULL);
    char payload[1024];
    snprintf(payload, sizeof payload,
             "{\"aud\":\"" AUDIENCE "\",\"iss\":\"https://login.microsoftonline.com/" TENANT "/v2.0\","
             "\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld,\"azp\":\"" APP "\",\"azpacr\":\"1\",\"idtyp\":\"app\","
             "\"oid\":\"" OID "\",\"roles\":[\"AI.User\"],\"sub\":\"" OID "\",\"tid\":\"" TENANT "\","
             "\"uti\":\"bench-uti-0000000001\",\"ver\":\"2.0\"}",
             c->now - 60, c->now - 60, c->now + 3600);
    char *tok = ag_tk_mint(key, kid, "RS256", payload);
    CHECK(tok, "minting");
    size_t tl = strlen(tok);
    c->bearer = malloc(tl + 8);
    memcpy(c->bearer, "Bearer ", 7);
    memcpy(c->bearer + 7, tok, tl + 1);
    free(tok);
    free(kid);
    X509_free(cert);
    EVP_PKEY_free(key);
    c->cache = ag_token_cache_new(1000);
    CHECK(c->cache, "token cache");
    return 0;
}

static void jwt_cleanup(jwt_ctx *c)
{
    ag_token_cache_free(c->cache);
    ag_token_memo_free(&c->memo);
    ag_jwks_unref(c->keys);
    free(c->bearer);
    ag_auth_config_free(&c->cfg);
}

static int jwt_auth(jwt_ctx *c, ag_token_cache *cache, ag_token_memo *memo, int want_cached)
{
    ag_auth_input in = {.authorization = c->bearer, .authorization_len = strlen(c->bearer), .memo = memo};
    ag_auth_result res;
    ag_auth_code code = ag_auth_authenticate(&c->cfg, cache, c->keys, &in, c->now, &c->id, &res);
    if (code != AG_AUTH_OK) {
        fprintf(stderr, "bench_stages: token rejected: %s (%s)\n", ag_auth_code_str(code), res.log);
        return -1;
    }
    if (want_cached >= 0 && res.cached != (want_cached != 0)) {
        fprintf(stderr, "bench_stages: expected cached=%d\n", want_cached);
        return -1;
    }
    return 0;
}

static int op_jwt_uncached(void *arg)
{
    return jwt_auth(arg, NULL, NULL, 0);
}

static int op_jwt_cached(void *arg)
{
    jwt_ctx *c = arg;
    return jwt_auth(c, c->cache, NULL, 1);
}

static int op_jwt_keepalive(void *arg)
{
    jwt_ctx *c = arg;
    return jwt_auth(c, c->cache, &c->memo, 1);
}

/* ---------------------------------------------------------------- rate limit */

typedef struct limit_ctx {
    ag_limit_config cfg;
    ag_limit_store *store;
    ag_limiter *limiter;
    cJSON *body;
    const ag_identity *id;
} limit_ctx;

static int limit_setup(limit_ctx *c, const ag_identity *id)
{
    memset(c, 0, sizeof *c);
    const char *conf = "{\"store\":{\"type\":\"memory\"},\"policies\":[{\"name\":\"bench-rpm-tpm\","
                       "\"key\":[\"tid\",\"oid\"],\"requests_per_minute\":1000000000,"
                       "\"tokens_per_minute\":1000000000}]}";
    cJSON *j = cJSON_Parse(conf);
    ag_conf_err err;
    CHECK(j && ag_limit_config_parse(j, "rate_limits", &c->cfg, &err) == 0, "limits config: %s",
          j ? err.msg : "JSON");
    cJSON_Delete(j);
    c->store = ag_limit_store_new(&c->cfg.store);
    CHECK(c->store, "store");
    ag_limiter_opts opts;
    memset(&opts, 0, sizeof opts);
    c->limiter = ag_limiter_new(c->store, &opts);
    CHECK(c->limiter, "limiter");
    c->body = cJSON_Parse(chat_body);
    c->id = id;
    return 0;
}

static void limit_cleanup(limit_ctx *c)
{
    ag_limiter_free(c->limiter);
    ag_limit_store_free(c->store);
    ag_limit_config_clear(&c->cfg);
    cJSON_Delete(c->body);
}

static int op_limit(void *arg)
{
    limit_ctx *c = arg;
    ag_limit_request req = {.id = c->id, .deployment = "gpt-4o-mini", .operation = "chat/completions",
                            .body = c->body};
    ag_limit_result res;
    ag_limit_ticket *t = NULL;
    ag_limit_status st = ag_limiter_admit(c->limiter, c->cfg.policies, &req, &res, &t, NULL, NULL);
    if (st != AG_LIMIT_DONE || res.verdict != AG_LIMIT_ADMITTED) {
        ag_limit_cancel(t);
        return -1;
    }
    ag_limit_finish(t, 42);
    return 0;
}

/* ---------------------------------------------------------------- audit */

static const char *const words[] = {"The ", "quarterly ", "report ", "shows ", "steady ", "growth ",
                                    "across ", "all ", "regions, ", "with ", "costs ", "under ",
                                    "control ", "and ", "a ", "healthy ", "pipeline. "};
#define NWORDS (sizeof words / sizeof words[0])

typedef struct audit_ctx {
    const ag_identity *id;
    ag_audit_record *rec; /* a finished record, for the serialise case */
    size_t row_bytes;
} audit_ctx;

static ag_audit_record *audit_build(const ag_identity *id)
{
    ag_audit_record *r = ag_audit_record_new();
    if (!r)
        return NULL;
    ag_audit_copy_field(r->request_id, sizeof r->request_id, "6f1c2a8e-3d4b-4c5d-9e6f-7a8b9c0d1e2f");
    r->identity = *id;
    ag_audit_copy_field(r->client_address, sizeof r->client_address, "10.1.2.3");
    ag_audit_copy_field(r->deployment, sizeof r->deployment, "gpt-4o-mini");
    ag_audit_copy_field(r->operation, sizeof r->operation, "chat.completions");
    ag_audit_copy_field(r->model, sizeof r->model, "gpt-4o-mini-2024-07-18");
    ag_audit_copy_field(r->api_version, sizeof r->api_version, "2024-10-21");
    ag_audit_copy_field(r->upstream, sizeof r->upstream, "eastus");
    ag_audit_copy_field(r->rate_limit_decision, sizeof r->rate_limit_decision, "allow");
    ag_audit_copy_field(r->rate_limit_policy, sizeof r->rate_limit_policy, "bench-rpm-tpm");
    r->stream = true;
    r->status = 200;
    r->latency_ms = 412;
    r->ttfb_ms = 95;
    r->prompt_tokens = 23;
    r->completion_tokens = 200;
    r->total_tokens = 223;
    r->estimated_tokens = 1047;
    if (ag_audit_record_add_decision(r, "pii-email", "redact") != 0 ||
        ag_audit_record_set_prompt(r, chat_body, sizeof chat_body - 1) != 0) {
        ag_audit_record_free(r);
        return NULL;
    }
    for (int i = 0; i < 200; i++) {
        const char *w = words[i % NWORDS];
        if (ag_audit_record_append_response(r, w, strlen(w)) != 0) {
            ag_audit_record_free(r);
            return NULL;
        }
    }
    return r;
}

static int op_audit_build(void *arg)
{
    audit_ctx *c = arg;
    ag_audit_record *r = audit_build(c->id);
    if (!r)
        return -1;
    ag_audit_record_free(r);
    return 0;
}

static int count_row(const char *json, size_t len, void *arg)
{
    audit_ctx *c = arg;
    if (len < 2 || json[0] != '{')
        return -1;
    c->row_bytes += len;
    return 0;
}

static int op_audit_rows(void *arg)
{
    audit_ctx *c = arg;
    ag_audit_row_opts opts;
    memset(&opts, 0, sizeof opts);
    opts.default_capture = AG_CAPTURE_FULL;
    opts.max_text_bytes = 1048576;
    opts.gateway_instance = "bench-host";
    c->row_bytes = 0;
    int n = ag_audit_record_rows(c->rec, &opts, count_row, c);
    return n == 1 && c->row_bytes > 500 ? 0 : -1;
}

/* ---------------------------------------------------------------- SSE */

typedef struct sse_ctx {
    char *stream;
    size_t len;
    size_t events;
    size_t json_ok;
    int parse_json;
    ag_request *req; /* parse_json: the gateway's own usage/text pass over each event */
} sse_ctx;

/* A chat completion stream as Azure sends it: prompt-filter event, 200 content deltas, the finish
 * chunk, the usage chunk and [DONE]. */
static void sse_build(sse_ctx *c)
{
    size_t cap = 128 * 1024, n = 0;
    char *b = malloc(cap);
    n += (size_t)snprintf(b + n, cap - n,
                          "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\","
                          "\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{"
                          "\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n");
    for (int i = 0; i < 200; i++) {
        n += (size_t)snprintf(b + n, cap - n,
                              "data: {\"choices\":[{\"content_filter_results\":{\"hate\":{\"filtered\":false,"
                              "\"severity\":\"safe\"},\"self_harm\":{\"filtered\":false,\"severity\":\"safe\"}},"
                              "\"delta\":{%s\"content\":\"%s\"},\"finish_reason\":null,\"index\":0,"
                              "\"logprobs\":null}],\"created\":1732800000,\"id\":\"chatcmpl-FAKE00000000000000001\","
                              "\"model\":\"gpt-4o-mini-2024-07-18\",\"object\":\"chat.completion.chunk\","
                              "\"system_fingerprint\":\"fp_bench\",\"usage\":null}\n\n",
                              i == 0 ? "\"role\":\"assistant\"," : "", words[i % NWORDS]);
    }
    n += (size_t)snprintf(b + n, cap - n,
                          "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],"
                          "\"created\":1732800000,\"id\":\"chatcmpl-FAKE00000000000000001\",\"model\":"
                          "\"gpt-4o-mini-2024-07-18\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n"
                          "data: {\"choices\":[],\"created\":1732800000,\"id\":\"chatcmpl-FAKE00000000000000001\","
                          "\"model\":\"gpt-4o-mini-2024-07-18\",\"object\":\"chat.completion.chunk\",\"usage\":"
                          "{\"completion_tokens\":200,\"prompt_tokens\":23,\"total_tokens\":223}}\n\n"
                          "data: [DONE]\n\n");
    c->stream = b;
    c->len = n;
}

static int on_event(void *arg, const ag_sse_event *ev)
{
    sse_ctx *c = arg;
    c->events++;
    if (c->parse_json)
        ag_usage_from_sse_event(c->req, ev); /* as forward.c does, with the audit's text capture on */
    return 0;
}

static int op_sse(void *arg)
{
    sse_ctx *c = arg;
    c->events = 0;
    c->json_ok = 0;
    if (c->req) {
        c->req->completion_len = 0;
        c->req->usage.present = false;
    }
    ag_sse_parser *p = ag_sse_parser_new(1 << 20, on_event, c);
    if (!p)
        return -1;
    for (size_t off = 0; off < c->len; off += 4096) {
        size_t n = c->len - off < 4096 ? c->len - off : 4096;
        if (ag_sse_parser_feed(p, c->stream + off, n) != 0) {
            ag_sse_parser_free(p);
            return -1;
        }
    }
    ag_sse_parser_free(p);
    if (c->events != 204)
        return -1;
    if (c->parse_json && (!c->req->usage.present || c->req->usage.total_tokens != 223 || c->req->completion_len == 0))
        return -1;
    return 0;
}

/* ---------------------------------------------------------------- policy */

#if defined(AG_BENCH_HAVE_POLICY) && AG_BENCH_HAVE_POLICY
typedef struct policy_ctx {
    ag_policy *pol;
    ag_policy_scratch *scratch;
    cJSON *body;
    ag_policy_call call;
} policy_ctx;

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0, r;
    char *b = malloc(cap + 1);
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *g = realloc(b, (cap *= 2) + 1);
            if (!g) {
                free(b);
                b = NULL;
                break;
            }
            b = g;
        }
    }
    fclose(f);
    if (b)
        b[n] = '\0';
    return b;
}

static int policy_setup(policy_ctx *c, const char *policy_file, const ag_identity *id)
{
    memset(c, 0, sizeof *c);
    char *text = read_all(policy_file);
    CHECK(text, "cannot read %s", policy_file);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    CHECK(doc, "%s is not JSON", policy_file);
    const cJSON *section = cJSON_GetObjectItemCaseSensitive(doc, "policy");
    ag_conf_err err;
    CHECK(section && ag_policy_load(section, "policy", &c->pol, &err) == 0, "policy: %s",
          section ? err.msg : "no \"policy\" member");
    cJSON_Delete(doc);
    c->scratch = ag_policy_scratch_new();
    CHECK(c->scratch, "scratch");
    /* 4 KiB of clean English prose (no PII, no secrets): the common case. */
    char prose[4097];
    size_t n = 0;
    for (int i = 0; n < 4096; i++) {
        const char *w = words[(size_t)(i * 7) % NWORDS];
        size_t wl = strlen(w);
        if (n + wl > 4096)
            wl = 4096 - n;
        memcpy(prose + n, w, wl);
        n += wl;
    }
    prose[n] = '\0';
    c->body = cJSON_CreateObject();
    cJSON *msgs = cJSON_AddArrayToObject(c->body, "messages");
    cJSON *sys = cJSON_CreateObject();
    cJSON_AddStringToObject(sys, "role", "system");
    cJSON_AddStringToObject(sys, "content", "You are a helpful assistant for the finance team.");
    cJSON_AddItemToArray(msgs, sys);
    cJSON *user = cJSON_CreateObject();
    cJSON_AddStringToObject(user, "role", "user");
    cJSON_AddStringToObject(user, "content", prose);
    cJSON_AddItemToArray(msgs, user);
    cJSON_AddNumberToObject(c->body, "max_tokens", 400);
    c->call.identity = id;
    c->call.deployment = "gpt-4o-mini";
    c->call.operation = "chat/completions";
    return 0;
}

static void policy_cleanup(policy_ctx *c)
{
    cJSON_Delete(c->body);
    ag_policy_scratch_free(c->scratch);
    ag_policy_free(c->pol);
}

static int op_policy(void *arg)
{
    policy_ctx *c = arg;
    ag_policy_result r;
    ag_policy_result_init(&r);
    int rc = ag_policy_inspect_request(c->pol, c->scratch, &c->call, c->body, &r);
    ag_policy_verdict v = r.verdict;
    ag_policy_result_clear(&r);
    return rc == 0 && v == AG_VERDICT_ALLOW ? 0 : -1;
}
#endif

/* ---------------------------------------------------------------- main */

static void write_json(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        failures++;
        return;
    }
    fprintf(f, "{\"budget_ms\":%.0f,\"smoke\":%s,\"cases\":[", budget_ms, smoke ? "true" : "false");
    for (size_t i = 0; i < nresults; i++)
        fprintf(f, "%s{\"name\":\"%s\",\"what\":\"%s\",\"median_ns\":%.1f,\"best_ns\":%.1f,\"iterations\":%ld}",
                i ? "," : "", results[i].name, results[i].what, results[i].median_ns, results[i].best_ns,
                results[i].iterations);
    fprintf(f, "]}\n");
    fclose(f);
}

int main(int argc, char **argv)
{
    ag_json_hooks_install(); /* cJSON allocates as in the gateway */
    const char *json_out = NULL;
    const char *policy_file = NULL;
#ifdef AG_BENCH_SOURCE_DIR
    static char default_policy[4096];
    snprintf(default_policy, sizeof default_policy, "%s/conf/policy-enterprise.json", AG_BENCH_SOURCE_DIR);
    policy_file = default_policy;
#endif
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ms") == 0 && i + 1 < argc)
            budget_ms = atof(argv[++i]);
        else if (strcmp(argv[i], "--smoke") == 0)
            smoke = 1;
        else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json_out = argv[++i];
        else if (strcmp(argv[i], "--policy-file") == 0 && i + 1 < argc)
            policy_file = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_stages [--ms N] [--smoke] [--json FILE] [--policy-file PATH] [--only CASE]\n");
            return 2;
        }
    }
    llhttp_settings_init(&head_settings);
    head_settings.on_header_field = on_header_field;
    head_settings.on_header_value = on_header_value;
    head_settings.on_headers_complete = on_headers_complete;

    printf("%-16s %12s %12s %10s   %s\n", "case", "median ns/op", "best ns/op", "iterations", "what");
    run_case("head_parse", "llhttp + ag_http checks, 9-header request head", op_head, NULL, 64);
    run_case("body_parse", "strict JSON parse of a 190-byte chat body", op_body, NULL, 64);
    held_resp_setup();
    run_case("resp_whole", "cJSON over a 2 KiB chat completion (a held response before)", op_resp_whole, NULL, 64);
    run_case("resp_held", "the same held response as the gateway parses it now", op_resp_held, NULL, 64);

    jwt_ctx jwt;
    int jwt_ok = jwt_setup(&jwt) == 0;
    if (jwt_ok) {
        run_case("jwt_uncached", "Entra token: parse, claims, RS256 verify (no cache)", op_jwt_uncached, &jwt, 8);
        jwt_auth(&jwt, jwt.cache, NULL, -1); /* warm the cache */
        run_case("jwt_cached", "Entra token from the per-worker cache (SHA-256 + lookup)", op_jwt_cached, &jwt, 64);
        run_case("jwt_keepalive", "the same token again on one connection (memo + lookup)", op_jwt_keepalive,
                 &jwt, 64);
    }
    ag_identity id = jwt.id;

    limit_ctx lim;
    if (limit_setup(&lim, &id) == 0) {
        run_case("ratelimit_admit", "admit + finish, memory store, 1 RPM+TPM policy", op_limit, &lim, 64);
        limit_cleanup(&lim);
    }

    audit_ctx au = {.id = &id};
    au.rec = audit_build(&id);
    if (!au.rec) {
        fprintf(stderr, "bench_stages: audit record build failed\n");
        failures++;
    } else {
        run_case("audit_build", "record + fields + prompt + 200 streamed deltas (worker side)", op_audit_build,
                 &au, 32);
        run_case("audit_serialise", "ag_audit_record_rows: one JSON row (audit thread side)", op_audit_rows, &au,
                 32);
        ag_audit_record_free(au.rec);
    }

    sse_ctx sse = {0};
    sse_build(&sse);
    run_case("sse_framing", "SSE parser, 200-chunk stream (~64 KiB) in 4 KiB reads", op_sse, &sse, 4);
    sse.parse_json = 1;
    ag_worker *sse_worker = calloc(1, sizeof *sse_worker); /* only its event arena is used */
    sse.req = calloc(1, sizeof *sse.req);
    if (!sse_worker || !sse.req)
        return 1;
    sse.req->worker = sse_worker;
    sse.req->want_text = true;
    run_case("sse_usage", "the same + the gateway's usage/text pass over every event (audit on)", op_sse, &sse, 2);
    free(sse.req->completion_text);
    free(sse.req);
    ag_json_arena_free(&sse_worker->event_arena);
    free(sse_worker);

#if defined(AG_BENCH_HAVE_POLICY) && AG_BENCH_HAVE_POLICY
    policy_ctx pc;
    if (!policy_file) {
        fprintf(stderr, "bench_stages: no policy file (--policy-file)\n");
        failures++;
    } else if (policy_setup(&pc, policy_file, &id) == 0) {
        run_case("policy_4k", "inspect a 4 KiB prompt, conf/policy-enterprise.json (verdict allow)", op_policy,
                 &pc, 4);
        policy_cleanup(&pc);
    }
#else
    printf("policy_4k        (not built: include/aoai_guard/policy.h was absent at configure time)\n");
#endif
    if (jwt_ok)
        jwt_cleanup(&jwt);
    if (json_out)
        write_json(json_out);
    printf("stream bytes: %zu; %s\n", sse.len, failures ? "FAILED" : "ok");
    free(sse.stream);
    return failures ? 1 : 0;
}
