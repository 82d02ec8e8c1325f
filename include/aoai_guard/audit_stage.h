/* The audit stage: admission against the trail's capacity, and one record per request at its end
 * (rejected and interrupted requests included), handed to the audit thread without blocking. */
#ifndef AOAI_GUARD_AUDIT_STAGE_H
#define AOAI_GUARD_AUDIT_STAGE_H

#include "aoai_guard/request.h"

/* Refuses the request with 503 when the trail cannot take its record (on_full = reject). */
ag_stage_result ag_audit_stage_admit(ag_request *req);
/* Builds and submits the request's record. */
void ag_audit_stage_record(ag_request *req);

#endif
