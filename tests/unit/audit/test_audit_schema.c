/* The rows the record builder emits must fit the table shipped in conf/azure/audit-table-dcr.json:
 * every key is a declared column with the matching JSON type, request + event rows together use every
 * column, the table and the DCR stream declare the same list, and the names follow the service's rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/audit_record.h"
#include "check.h"

static cJSON *load_template(void)
{
    const char *src = getenv("AG_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/conf/azure/audit-table-dcr.json", src ? src : ".");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = '\0';
    cJSON *t = cJSON_Parse(buf);
    free(buf);
    return t;
}

static int collect(const char *json, size_t len, void *arg)
{
    cJSON *arr = arg;
    cJSON *o = cJSON_ParseWithLength(json, len);
    if (!o)
        return -1;
    cJSON_AddItemToArray(arr, o);
    return 0;
}

static const cJSON *find_column(const cJSON *cols, const char *name)
{
    for (const cJSON *c = cols->child; c; c = c->next) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(c, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
            return c;
    }
    return NULL;
}

static bool type_matches(const char *type, const cJSON *v)
{
    if (strcmp(type, "string") == 0)
        return cJSON_IsString(v);
    if (strcmp(type, "int") == 0 || strcmp(type, "long") == 0)
        return cJSON_IsNumber(v) && v->valuedouble == (double)(long long)v->valuedouble;
    if (strcmp(type, "real") == 0)
        return cJSON_IsNumber(v);
    if (strcmp(type, "boolean") == 0)
        return cJSON_IsBool(v);
    if (strcmp(type, "dynamic") == 0)
        return cJSON_IsObject(v) || cJSON_IsArray(v);
    if (strcmp(type, "datetime") == 0) { /* RFC 3339 UTC: 2026-01-02T03:04:05.678Z */
        const char *s = cJSON_IsString(v) ? v->valuestring : "";
        return strlen(s) == 24 && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':' &&
               s[16] == ':' && s[19] == '.' && s[23] == 'Z';
    }
    return false;
}

static bool valid_column_name(const char *n)
{
    static const char *const reserved[] = {"_ResourceId", "id", "_SubscriptionId", "TenantId", "Type",
                                           "UniqueId", "Title", NULL};
    size_t len = strlen(n);
    if (len == 0 || len > 45 || !((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= 'A' && n[0] <= 'Z')))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    for (int i = 0; reserved[i]; i++)
        if (strcmp(n, reserved[i]) == 0)
            return false;
    return true;
}

static ag_audit_record *full_request(void)
{
    ag_audit_record *r = ag_audit_record_new();
    snprintf(r->request_id, sizeof r->request_id, "req-schema");
    r->identity.kind = AG_IDENTITY_APP;
    snprintf(r->identity.tid, sizeof r->identity.tid, "t");
    snprintf(r->identity.oid, sizeof r->identity.oid, "o");
    snprintf(r->identity.app, sizeof r->identity.app, "a");
    snprintf(r->identity.upn, sizeof r->identity.upn, "u@example.com");
    snprintf(r->identity.name, sizeof r->identity.name, "svc");
    snprintf(r->identity.roles, sizeof r->identity.roles, "AI.User");
    snprintf(r->client_address, sizeof r->client_address, "127.0.0.1");
    snprintf(r->deployment, sizeof r->deployment, "gpt-4o");
    snprintf(r->operation, sizeof r->operation, "chat.completions");
    snprintf(r->model, sizeof r->model, "gpt-4o-2024-08-06");
    snprintf(r->api_version, sizeof r->api_version, "2024-10-21");
    snprintf(r->upstream, sizeof r->upstream, "eastus");
    snprintf(r->rate_limit_decision, sizeof r->rate_limit_decision, "allow");
    snprintf(r->rate_limit_policy, sizeof r->rate_limit_policy, "per-user");
    r->status = 200;
    r->latency_ms = 10;
    r->ttfb_ms = 5;
    r->prompt_tokens = 1;
    r->completion_tokens = 2;
    r->total_tokens = 3;
    r->estimated_tokens = 4;
    ag_audit_record_add_decision(r, "rule", "allow");
    ag_audit_record_set_prompt(r, "p", 1);
    ag_audit_record_set_response(r, "r", 1);
    return r;
}

int main(void)
{
    cJSON *t = load_template();
    CHECK(t != NULL);
    if (!t)
        return CHECK_DONE();
    const cJSON *vars = cJSON_GetObjectItemCaseSensitive(t, "variables");
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(vars, "auditColumns");
    CHECK(cJSON_IsArray(cols) && cJSON_GetArraySize(cols) > 10);
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(vars, "tableName")->valuestring, "AoaiGuardAudit_CL");
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(vars, "streamName")->valuestring, "Custom-AoaiGuardAudit");

    /* the table and the DCR stream both use the one column list */
    int table_refs = 0, stream_refs = 0;
    for (const cJSON *res = cJSON_GetObjectItemCaseSensitive(t, "resources")->child; res; res = res->next) {
        const char *type = cJSON_GetObjectItemCaseSensitive(res, "type")->valuestring;
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(res, "properties");
        if (strcmp(type, "Microsoft.OperationalInsights/workspaces/tables") == 0) {
            const cJSON *schema = cJSON_GetObjectItemCaseSensitive(props, "schema");
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(schema, "columns");
            table_refs += cJSON_IsString(c) && strcmp(c->valuestring, "[variables('auditColumns')]") == 0;
        } else if (strcmp(type, "Microsoft.Insights/dataCollectionRules") == 0) {
            CHECK_STR(cJSON_GetObjectItemCaseSensitive(res, "kind")->valuestring, "Direct");
            const cJSON *decl = cJSON_GetObjectItemCaseSensitive(props, "streamDeclarations");
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(decl, "Custom-AoaiGuardAudit");
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(s, "columns");
            stream_refs += cJSON_IsString(c) && strcmp(c->valuestring, "[variables('auditColumns')]") == 0;
            const cJSON *flow = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(props, "dataFlows"), 0);
            CHECK_STR(cJSON_GetObjectItemCaseSensitive(flow, "transformKql")->valuestring, "source");
        }
    }
    CHECK_INT(table_refs, 1);
    CHECK_INT(stream_refs, 1);

    /* names: letter first, <= 45 alnum/_, not reserved, unique; TimeGenerated is a datetime */
    int ncols = 0;
    for (const cJSON *c = cols->child; c; c = c->next, ncols++) {
        const char *n = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        const char *ty = cJSON_GetObjectItemCaseSensitive(c, "type")->valuestring;
        if (!valid_column_name(n))
            fprintf(stderr, "bad column name %s\n", n);
        CHECK(valid_column_name(n));
        CHECK(strstr("string int long real boolean dynamic datetime", ty) != NULL);
        CHECK(find_column(cols, n) == c);
    }
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(find_column(cols, "TimeGenerated"), "type")->valuestring,
              "datetime");

    /* rows of a fully filled request (split so a continuation part exists) and of an event */
    cJSON *rows = cJSON_CreateArray();
    ag_audit_record *r = full_request();
    char *big = malloc(70000);
    memset(big, 'x', 70000);
    ag_audit_record_set_prompt(r, big, 70000);
    free(big);
    ag_audit_row_opts o = {AG_CAPTURE_FULL, 1 << 20, 0, "gw"};
    CHECK_INT(ag_audit_record_rows(r, &o, collect, rows), 2);
    ag_audit_record_free(r);
    ag_audit_record *e = ag_audit_record_new();
    e->type = AG_AUDIT_GATEWAY_EVENT;
    e->event_type = AG_EVENT_START;
    snprintf(e->request_id, sizeof e->request_id, "ev");
    e->event_details = strdup("{\"version\":\"1\"}");
    CHECK_INT(ag_audit_record_rows(e, &o, collect, rows), 1);
    ag_audit_record_free(e);

    cJSON *used = cJSON_CreateObject();
    for (const cJSON *row = rows->child; row; row = row->next) {
        for (const cJSON *kv = row->child; kv; kv = kv->next) {
            const cJSON *col = find_column(cols, kv->string);
            if (!col) {
                fprintf(stderr, "row key %s is not a column of the table\n", kv->string);
                CHECK(col != NULL);
                continue;
            }
            const char *ty = cJSON_GetObjectItemCaseSensitive(col, "type")->valuestring;
            if (!type_matches(ty, kv))
                fprintf(stderr, "row key %s does not hold a %s\n", kv->string, ty);
            CHECK(type_matches(ty, kv));
            if (!cJSON_GetObjectItemCaseSensitive(used, kv->string))
                cJSON_AddTrueToObject(used, kv->string);
        }
    }
    for (const cJSON *c = cols->child; c; c = c->next) {
        const char *n = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        if (!cJSON_GetObjectItemCaseSensitive(used, n))
            fprintf(stderr, "column %s is never written\n", n);
        CHECK(cJSON_GetObjectItemCaseSensitive(used, n) != NULL);
    }
    CHECK_INT(cJSON_GetArraySize(used), ncols);
    cJSON_Delete(used);
    cJSON_Delete(rows);
    cJSON_Delete(t);
    return CHECK_DONE();
}
