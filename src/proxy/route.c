/* Azure OpenAI path routing (see route.h). */
#include "aoai_guard/route.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "aoai_guard/log.h"

/* Operations under /openai/deployments/{id}/ and /openai/v1/, and whether they carry JSON. */
typedef struct op_def {
    const char *name;
    bool json;
    bool v1;   /* also offered under /openai/v1/ */
} op_def;

static const op_def operations[] = {
    {"chat/completions", true, true},
    {"completions", true, true},
    {"embeddings", true, true},
    {"images/generations", true, true},
    {"images/edits", false, true},
    {"audio/transcriptions", false, true},
    {"audio/translations", false, true},
    {"audio/speech", true, true},
    {"responses", true, true},
    {NULL, false, false},
};

/* Byte sets, one bit per byte value: RFC 3986 unreserved (ALPHA DIGIT "-._~"), and the bytes
 * of a deployment name (the same without '~'). */
static const uint64_t UNRESERVED[4] = {UINT64_C(0x03ff600000000000), UINT64_C(0x47fffffe87fffffe), 0, 0};
static const uint64_t DEPLOYMENT[4] = {UINT64_C(0x03ff600000000000), UINT64_C(0x07fffffe87fffffe), 0, 0};

static bool in_set(const uint64_t set[4], char ch)
{
    unsigned char c = (unsigned char)ch;
    return (set[c >> 6] >> (c & 63)) & 1;
}

bool ag_route_deployment_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!in_set(DEPLOYMENT, s[i]))
            return false;
    return !(n <= 2 && s[0] == '.'); /* "." and ".." are path tricks, not names */
}

/* Copies the NUL-terminated src into dst[cap], truncated as snprintf would (without its cost on
 * every request). */
static void set_name(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Only unreserved characters and '/' in a routed path; no empty, "." or ".." segments. Percent
 * escapes are refused outright so that we and Azure can never decode a path differently. */
/* A segment s[0..n) that is "." or "..". */
static bool dot_segment(const char *s, size_t n)
{
    return (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.');
}

static bool path_clean(const char *p, size_t n)
{
    if (n == 0 || p[0] != '/')
        return false;
    const char *end = p + n, *seg = p + 1; /* where the current segment starts */
    for (const char *s = seg; s < end; s++) {
        if (*s != '/') {
            if (!in_set(UNRESERVED, *s))
                return false;
            continue;
        }
        if (s == seg || dot_segment(seg, (size_t)(s - seg)))
            return false; /* "//", "/./", "/../" */
        seg = s + 1;
    }
    return !dot_segment(seg, (size_t)(end - seg)); /* the last segment may be empty */
}

static const op_def *find_op(const char *s, size_t n)
{
    for (const op_def *o = operations; o->name; o++)
        if (strlen(o->name) == n && memcmp(o->name, s, n) == 0)
            return o;
    return NULL;
}

int ag_route_classify(const char *path, size_t len, const char *method, const char *const *allow_paths,
                      ag_route *out)
{
    memset(out, 0, sizeof *out);
    if (!path_clean(path, len))
        return 400;
    static const char dep_prefix[] = "/openai/deployments/";
    static const char v1_prefix[] = "/openai/v1/";
    const size_t dpl = sizeof dep_prefix - 1, v1l = sizeof v1_prefix - 1;
    bool post = strcmp(method, "POST") == 0;

    if (len > dpl && memcmp(path, dep_prefix, dpl) == 0) {
        const char *d = path + dpl;
        const char *slash = memchr(d, '/', len - dpl);
        if (slash) {
            size_t dl = (size_t)(slash - d);
            const op_def *op = find_op(slash + 1, len - dpl - dl - 1);
            if (op && strcmp(op->name, "responses") != 0 && ag_route_deployment_ok(d, dl)) {
                if (!post)
                    return 405;
                out->kind = AG_API_DEPLOYMENT;
                memcpy(out->deployment, d, dl);
                set_name(out->operation, sizeof out->operation, op->name);
                out->json_body = op->json;
                return 0;
            }
        }
    } else if (len == 17 && memcmp(path, "/openai/responses", 17) == 0) {
        if (!post)
            return 405;
        out->kind = AG_API_RESPONSES;
        set_name(out->operation, sizeof out->operation, "responses");
        out->json_body = true;
        return 0;
    } else if (len > v1l && memcmp(path, v1_prefix, v1l) == 0) {
        const op_def *op = find_op(path + v1l, len - v1l);
        if (op && op->v1) {
            if (!post)
                return 405;
            out->kind = AG_API_V1;
            set_name(out->operation, sizeof out->operation, op->name);
            out->json_body = op->json;
            return 0;
        }
    }
    for (size_t i = 0; allow_paths && allow_paths[i]; i++) {
        size_t pl = strlen(allow_paths[i]);
        bool dir = pl > 0 && allow_paths[i][pl - 1] == '/';
        if ((len == pl && memcmp(path, allow_paths[i], pl) == 0) ||
            (len > pl && memcmp(path, allow_paths[i], pl) == 0 && (dir || path[pl] == '/'))) {
            out->kind = AG_API_ALLOWED_PATH;
            return 0;
        }
    }
    return 404;
}

/* Copies the api-version query parameter (when present and sane) for the log and audit. */
static void take_api_version(ag_request *r)
{
    if (r->path_len >= r->target_len)
        return;
    const char *q = r->target + r->path_len + 1;
    for (const char *p = q; p && *p;) {
        if (strncmp(p, "api-version=", 12) == 0) {
            const char *v = p + 12;
            size_t n = strcspn(v, "&");
            if (n < sizeof r->api_version) {
                for (size_t i = 0; i < n; i++)
                    if (!((v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'z') || v[i] == '-'))
                        return;
                memcpy(r->api_version, v, n);
                r->api_version[n] = '\0';
            }
            return;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
}

ag_stage_result ag_route_stage(ag_request *r)
{
    int st = ag_route_classify(r->target, r->path_len, r->method_str,
                               (const char *const *)r->cfg->allow_paths, &r->route);
    if (st) {
        /* The body has not been read: close after answering. */
        if (st == 404)
            ag_request_error(r, 404, "404", "Resource not found", NULL, true);
        else if (st == 405)
            ag_request_error(r, 405, "MethodNotAllowed", "This operation takes POST.", NULL, true);
        else
            ag_request_error(r, 400, "BadRequest", "Invalid request path.", NULL, true);
        return AG_STAGE_DONE;
    }
    take_api_version(r);
    return AG_STAGE_NEXT;
}

int ag_route_take_model(ag_request *r)
{
    if (r->route.kind != AG_API_V1 && r->route.kind != AG_API_RESPONSES)
        return 0;
    if (!r->has_model || r->model_len >= sizeof r->model || !ag_route_deployment_ok(r->model, r->model_len)) {
        ag_request_error(r, 400, "BadRequest",
                         "The \"model\" field must name a deployment (1-64 of A-Z a-z 0-9 . _ -).",
                         NULL, false);
        return -1;
    }
    set_name(r->route.deployment, sizeof r->route.deployment, r->model);
    return 0;
}
