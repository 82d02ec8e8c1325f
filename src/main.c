/* aoai-guard: command line, then the runtime. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/thread.h>

#include "aoai_guard/config.h"
#include "aoai_guard/event_mem.h"
#include "aoai_guard/json_arena.h"
#include "aoai_guard/log.h"
#include "aoai_guard/runtime.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: aoai-guard [--config FILE] [--port-file FILE]\n"
            "       aoai-guard --check-config --config FILE\n"
            "       aoai-guard --healthcheck URL\n"
            "       aoai-guard --version\n"
            "\n"
            "  --config FILE      JSON configuration (default: embedded development defaults)\n"
            "  --check-config     validate the configuration and exit 0 (valid) or 1\n"
            "  --port-file FILE   write the bound ports (listener N PORT / admin PORT) once listening\n"
            "  --healthcheck URL  GET a local health URL and exit 0 on HTTP 200 (container HEALTHCHECK)\n"
            "  --version          print the version\n");
}

/* A blocking GET is fine here: this is a short-lived separate process, not the proxy. */
static int healthcheck(const char *url)
{
    if (strncmp(url, "http://127.0.0.1", 16) != 0 && strncmp(url, "http://localhost", 16) != 0 &&
        strncmp(url, "http://[::1]", 12) != 0) {
        fprintf(stderr, "aoai-guard: --healthcheck only checks a local http:// URL\n");
        return 1;
    }
    CURL *c = curl_easy_init();
    if (!c)
        return 1;
    long code = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(c, CURLOPT_NOBODY, 0L);
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull)
        curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (devnull)
        fclose(devnull);
    return code == 200 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"port-file", required_argument, NULL, 'p'},
        {"healthcheck", required_argument, NULL, 'H'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *port_file = NULL, *health_url = NULL;
    bool check_only = false;
    int o;
    ag_event_mem_install();  /* before any libevent call */
    ag_json_hooks_install(); /* before any thread uses cJSON */
    while ((o = getopt_long(argc, argv, "c:kp:H:vh", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config_path = optarg; break;
        case 'k': check_only = true; break;
        case 'p': port_file = optarg; break;
        case 'H': health_url = optarg; break;
        case 'v': printf("aoai-guard %s\n", AG_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "aoai-guard: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (health_url) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int rc = healthcheck(health_url);
        curl_global_cleanup();
        return rc;
    }
    if (check_only && !config_path) {
        fprintf(stderr, "aoai-guard: --check-config needs --config FILE\n");
        return 2;
    }
    evthread_use_pthreads();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ag_conf_err err = {{0}};
    ag_config *cfg = config_path ? ag_config_load_file(config_path, &err) : ag_config_load_defaults(&err);
    if (!cfg) {
        fprintf(stderr, "aoai-guard: configuration error: %s\n", err.msg);
        curl_global_cleanup();
        return 1;
    }
    if (check_only) {
        printf("aoai-guard: configuration %s is valid\n", config_path);
        ag_config_unref(cfg);
        curl_global_cleanup();
        return 0;
    }
    ag_runtime rt;
    memset(&rt, 0, sizeof rt);
    rt.config_path = config_path ? strdup(config_path) : NULL;
    rt.port_file = port_file;
    int status = ag_runtime_run(&rt, cfg);
    free(rt.config_path);
    curl_global_cleanup();
    return status;
}
