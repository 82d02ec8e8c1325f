/* The "content_safety" configuration section (see content_safety.h for the call-out itself). */
#ifndef AOAI_GUARD_CONTENT_SAFETY_CONFIG_H
#define AOAI_GUARD_CONTENT_SAFETY_CONFIG_H

#include <stdbool.h>
#include <cjson/cJSON.h>

#include "aoai_guard/confparse.h"

typedef struct ag_content_safety_config {
    bool enabled;
    char *endpoint;          /* https://{resource}.cognitiveservices.azure.com (no trailing '/') */
    char *api_version;       /* default 2024-09-01 */
    bool use_entra;          /* auth.type entra: the proxy's token for cognitiveservices */
    char *api_key;           /* auth.type api_key: Ocp-Apim-Subscription-Key */
    long long timeout_ms;    /* per call, default 2000 */
    bool fail_closed;        /* on_error: fail_closed answers 503; fail_open (default) forwards */
    bool shield_prompt;      /* default true */
    bool analyze;            /* "analyze" present */
    long long block_severity;/* analyze: block at or above this severity (default 4: medium) */
    char *ca_file;
} ag_content_safety_config;

/* Parses the section (NULL: disabled). Errors name the key; unknown keys are refused. */
int ag_content_safety_config_parse(const cJSON *obj, const char *path, ag_content_safety_config *out,
                                   ag_conf_err *err);
void ag_content_safety_config_free(ag_content_safety_config *c);

#endif
