/* The configuration: one JSON file, validated strictly, published as an immutable snapshot.
 *
 * A snapshot is reference-counted: the control thread loads and publishes it, each worker holds a
 * reference to the one it serves with, and a request keeps the snapshot it started with until it ends,
 * so SIGHUP never changes the rules under an in-flight request. */
#ifndef AOAI_GUARD_CONFIG_H
#define AOAI_GUARD_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include <openssl/ssl.h>

#include "aoai_guard/audit_config.h"
#include "aoai_guard/auth_config.h"
#include "aoai_guard/confparse.h"
#include "aoai_guard/content_safety_config.h"
#include "aoai_guard/credential.h"
#include "aoai_guard/metrics.h"
#include "aoai_guard/ratelimit_config.h"

typedef struct ag_tls_conf {
    char *cert_file;
    char *key_file;
    char *client_ca_file;   /* NULL: no client certificates; else required and verified (mTLS) */
    SSL_CTX *ctx;           /* built at load time; owned by the snapshot */
} ag_tls_conf;

typedef struct ag_listener_conf {
    char *address;
    int port;               /* 0: ephemeral (the bound port is reported at start) */
    ag_tls_conf *tls;       /* NULL: plain HTTP */
} ag_listener_conf;

typedef struct ag_limits_conf {
    long long max_header_bytes;      /* request line + headers; 431 beyond (414 for the URI alone) */
    long long max_headers;           /* header count; 431 beyond */
    long long max_body_bytes;        /* 413 beyond */
    long long header_timeout_ms;     /* total deadline for request line + headers; 408 */
    long long body_timeout_ms;       /* total deadline for the body once headers are in; 408 */
    long long idle_timeout_ms;       /* keep-alive idle between requests; closed silently */
    long long send_timeout_ms;       /* a client that reads nothing for this long is dropped */
    long long max_connections;       /* over all listeners and workers; 503 + close beyond */
    long long max_requests_per_connection;
} ag_limits_conf;

typedef enum ag_upstream_auth {
    AG_UPSTREAM_AUTH_API_KEY = 0,    /* api-key header from config/env */
    AG_UPSTREAM_AUTH_ENTRA,          /* Authorization: Bearer from the proxy's own credential */
    AG_UPSTREAM_AUTH_PASSTHROUGH,    /* the caller's credentials are forwarded unchanged */
} ag_upstream_auth;

typedef struct ag_upstream_conf {
    char *name;
    char *url;                       /* as configured */
    bool tls;                        /* https */
    char *host;                      /* host name or IP literal, no brackets */
    int port;
    char *host_header;               /* "host" or "host:port" when the port is not the default */
    int priority;                    /* lower is preferred */
    int weight;                      /* within one priority */
    ag_upstream_auth auth;
    char *api_key;                   /* AG_UPSTREAM_AUTH_API_KEY */
    char *ca_file;                   /* NULL: system trust store */
    long long connect_timeout_ms;
    long long first_byte_timeout_ms;
    long long idle_timeout_ms;       /* between response bytes once the response started */
    long long max_idle_connections;  /* per worker */
    long long pool_idle_timeout_ms;  /* an idle pooled connection is closed after this */
    long long failure_threshold;     /* consecutive failures that open the circuit */
    long long cooldown_ms;           /* how long an open circuit stays open */
    SSL_CTX *ssl_ctx;                /* built at load time when tls; owned by the snapshot */
} ag_upstream_conf;

/* Top-level sections, in the order ag_config_diff reports them. */
#define AG_CONFIG_SECTIONS 14
extern const char *const ag_config_section_names[AG_CONFIG_SECTIONS];

typedef struct ag_config {
    _Atomic long refs;
    unsigned char section_sha256[AG_CONFIG_SECTIONS][32]; /* of each section's canonical JSON */
    char *source;                    /* file path, or "(embedded defaults)" */
    unsigned char sha256[32];        /* of the file bytes, for audit of config changes */
    long long workers;               /* resolved: >= 1 */
    ag_listener_conf *listeners;
    size_t nlisteners;
    char *admin_address;             /* NULL: no admin listener */
    int admin_port;
    ag_limits_conf limits;
    ag_upstream_conf *upstreams;
    size_t nupstreams;
    char **allow_paths;              /* extra path prefixes forwarded as-is (NULL-terminated) */
    bool forward_client_ip;          /* add X-Forwarded-For with the caller's address */
    long long drain_timeout_ms;      /* SIGTERM: in-flight requests get this long */
    int log_level;                   /* ag_log_level */
    bool access_log;
    ag_metrics_conf metrics;         /* admin.metrics */
    /* Sections owned by the stages, parsed by each stage's own parser. */
    ag_auth_config auth;             /* mode none when the section is absent */
    bool has_credential;             /* the proxy needs its own Entra credential */
    ag_credential_config credential;
    bool has_rate_limits;
    ag_limit_config rate_limits;
    bool has_audit;                  /* absent section: no audit trail (logged at start) */
    ag_audit_config audit;
    struct ag_policy *policy;        /* compiled prompt policy; NULL when the section is absent */
    ag_content_safety_config content_safety; /* .enabled false when the section is absent */
} ag_config;

/* Loads and validates a configuration file; NULL with err naming the key on any problem. */
ag_config *ag_config_load_file(const char *path, ag_conf_err *err);
/* Same from memory; origin names the source in messages and in ->source. */
ag_config *ag_config_load_json(const char *json, size_t len, const char *origin, ag_conf_err *err);
/* The embedded development defaults: one plain listener on 127.0.0.1:8080, admin on 9901, and the
 * upstream from AZURE_OPENAI_ENDPOINT (+ AZURE_OPENAI_API_KEY) or else the stand-in at
 * http://127.0.0.1:8081. */
ag_config *ag_config_load_defaults(ag_conf_err *err);

/* Takes a reference (thread-safe). */
ag_config *ag_config_ref(ag_config *cfg);
/* Drops a reference; the last one frees the snapshot and everything it owns. */
void ag_config_unref(ag_config *cfg);

/* Names the top-level sections whose content differs between two snapshots ("limits,upstreams"). */
void ag_config_diff(const ag_config *a, const ag_config *b, char *out, size_t outlen);

#endif
