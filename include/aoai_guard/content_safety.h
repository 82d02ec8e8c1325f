/* The optional call-out to Azure AI Content Safety: Prompt Shields (text:shieldPrompt) and text
 * analysis (text:analyze) on the prompt, through libcurl on the worker's own loop, with a timeout
 * and fail-open or fail-closed. Configured by the top-level "content_safety" section; without it
 * the stage does nothing. */
#ifndef AOAI_GUARD_CONTENT_SAFETY_H
#define AOAI_GUARD_CONTENT_SAFETY_H

#include <stdbool.h>
#include <cjson/cJSON.h>

#include "aoai_guard/content_safety_config.h"
#include "aoai_guard/request.h"
#include "aoai_guard/worker.h"

/* Per-worker HTTP client for the call-outs. 0 or -1. */
int ag_content_safety_worker_init(ag_worker *w);
void ag_content_safety_worker_free(ag_worker *w);

/* Pipeline stage: calls the configured analyses and waits for them (the request is parked on the
 * worker's loop); blocks with Azure's content_filter error shape when an attack or a harmful
 * category is found. */
ag_stage_result ag_content_safety_stage(ag_request *req);

#endif
