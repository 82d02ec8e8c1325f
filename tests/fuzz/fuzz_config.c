/* Fuzz target: configuration loading (ag_config_load_json): strict JSON, ${NAME} substitution,
 * every section's parser (listeners with TLS, limits, upstreams, routes, auth, credential,
 * rate_limits, policy, audit, log, shutdown) and their cross-checks.
 *
 * Input: the configuration file's bytes. Inputs naming /dev, /proc or /sys are skipped: a
 * cert_file of /dev/zero would make OpenSSL read forever, which is a property of the path, not of
 * our parser.
 * Oracles besides the sanitizers: a loaded configuration respects the documented limit bounds,
 * differs from itself in no section (ag_config_diff), and loading the same bytes again gives the
 * same per-section hashes (the reload diff relies on it). A failed load always says why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aoai_guard/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Variables the seed configurations reference; others are unset and must be reported. */
    setenv("AZURE_OPENAI_ENDPOINT", "https://contoso.openai.azure.com", 1);
    setenv("AZURE_OPENAI_API_KEY", "0123456789abcdef0123456789abcdef", 1);
    setenv("AG_FUZZ_SECRET", "s3cret-value-for-fuzzing", 1);
    unsetenv("AG_FUZZ_UNSET");
    return 0;
}

static bool names_special_path(const uint8_t *d, size_t n)
{
    static const char *const bad[] = {"/dev", "/proc", "/sys", NULL};
    for (int k = 0; bad[k]; k++) {
        size_t bl = strlen(bad[k]);
        for (size_t i = 0; i + bl <= n; i++)
            if (memcmp(d + i, bad[k], bl) == 0)
                return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        LLVMFuzzerInitialize(NULL, NULL);
        init = true;
    }
    if (size > 256 * 1024 || names_special_path(data, size))
        return 0;
    ag_conf_err err;
    memset(&err, 0, sizeof err);
    ag_config *cfg = ag_config_load_json((const char *)data, size, "fuzz.json", &err);
    if (!cfg) {
        if (err.msg[0] == '\0')
            __builtin_trap(); /* a rejection must name its reason */
        return 0;
    }
    const ag_limits_conf *l = &cfg->limits;
    if (l->max_header_bytes < 1024 || l->max_header_bytes > 1048576 || l->max_headers < 8 ||
        l->max_headers > 1000 || l->max_body_bytes < 1024 || l->max_connections < 1 || cfg->workers < 1 ||
        cfg->nlisteners == 0 || cfg->nupstreams == 0)
        __builtin_trap();
    char diff[512];
    ag_config_diff(cfg, cfg, diff, sizeof diff);
    if (diff[0] != '\0')
        __builtin_trap();
    ag_conf_err err2;
    ag_config *again = ag_config_load_json((const char *)data, size, "fuzz.json", &err2);
    if (!again || memcmp(again->section_sha256, cfg->section_sha256, sizeof cfg->section_sha256) != 0)
        __builtin_trap();
    ag_config_unref(again);
    ag_config_unref(cfg);
    return 0;
}
