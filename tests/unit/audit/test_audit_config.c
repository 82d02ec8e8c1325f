/* The "audit" section: defaults, every key, and errors that name the exact key. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "aoai_guard/audit_config.h"
#include "check.h"

static int parse(const char *json, ag_audit_config *c, ag_conf_err *err)
{
    cJSON *j = cJSON_Parse(json);
    if (!j) {
        fprintf(stderr, "bad test JSON: %s\n", json);
        return -2;
    }
    int rc = ag_audit_config_parse(j, "audit", c, err);
    cJSON_Delete(j);
    return rc;
}

/* Expects a parse failure whose message equals want exactly. */
static void fails(const char *json, const char *want)
{
    ag_audit_config c;
    ag_conf_err err = {{0}};
    CHECK_INT(parse(json, &c, &err), -1);
    CHECK_STR(err.msg, want);
    CHECK_INT(c.nsinks, 0);
}

int main(void)
{
    ag_audit_config c;
    ag_conf_err err = {{0}};

    /* absent section: the development default */
    CHECK_INT(ag_audit_config_parse(NULL, "audit", &c, &err), 0);
    CHECK_INT(c.nsinks, 1);
    CHECK_INT(c.sinks[0].type, AG_AUDIT_SINK_FILE);
    CHECK_STR(c.sinks[0].path, "audit.jsonl");
    CHECK_STR(c.spool_dir, "spool");
    CHECK_INT(c.on_full, AG_AUDIT_ON_FULL_REJECT);
    CHECK_INT(c.capture, AG_CAPTURE_FULL);
    ag_audit_config_free(&c);

    /* the outline from DESIGN.md */
    CHECK_INT(parse("{\"sinks\":[{\"type\":\"file\",\"path\":\"audit.jsonl\"}],\"spool_dir\":\"spool\"}", &c, &err), 0);
    CHECK_INT(c.sinks[0].max_bytes, 100LL * 1024 * 1024);
    CHECK_INT(c.sinks[0].max_files, 5);
    CHECK_INT(c.fsync_interval_ms, 0);
    ag_audit_config_free(&c);

    /* everything set */
    const char *full =
        "{\"sinks\":[{\"type\":\"stdout\"},"
        "{\"type\":\"azure_monitor\",\"endpoint\":\"https://dce-1.eastus-1.ingest.monitor.azure.com/\","
        "\"dcr_immutable_id\":\"dcr-0123456789abcdef0123456789abcdef\",\"stream\":\"Custom-AoaiGuardAudit\","
        "\"batch_max_bytes\":500000,\"max_calls_per_minute\":600,\"dead_letter_path\":\"/var/dl.jsonl\","
        "\"ca_file\":\"/etc/ca.pem\",\"timeout_ms\":5000,\"retry_initial_ms\":200,\"retry_max_ms\":30000},"
        "{\"type\":\"azure_monitor\",\"endpoint\":\"http://127.0.0.1:9999\",\"dcr_immutable_id\":\"dcr-2\","
        "\"stream\":\"Custom-X\"}],"
        "\"spool_dir\":\"/var/spool/aoai\",\"capture\":\"hashed\",\"max_text_bytes_per_request\":65536,"
        "\"queue_capacity\":1024,\"spool_max_bytes\":10485760,\"on_full\":\"drop_oldest\",\"fsync\":250}";
    CHECK_INT(parse(full, &c, &err), 0);
    CHECK_INT(c.nsinks, 3);
    CHECK_INT(c.sinks[0].type, AG_AUDIT_SINK_STDOUT);
    CHECK_STR(c.sinks[0].name, "stdout");
    CHECK_STR(c.sinks[1].name, "azure_monitor");
    CHECK_STR(c.sinks[2].name, "azure_monitor-2");
    CHECK_STR(c.sinks[1].endpoint, "https://dce-1.eastus-1.ingest.monitor.azure.com");
    CHECK_INT(c.sinks[1].batch_max_bytes, 500000);
    CHECK_INT(c.sinks[1].max_calls_per_minute, 600);
    CHECK_STR(c.sinks[1].dead_letter_path, "/var/dl.jsonl");
    CHECK_INT(c.sinks[2].batch_max_bytes, 1000000);
    CHECK_INT(c.sinks[2].max_calls_per_minute, 12000);
    CHECK_INT(c.capture, AG_CAPTURE_HASHED);
    CHECK_INT(c.on_full, AG_AUDIT_ON_FULL_DROP_OLDEST);
    CHECK_INT(c.fsync_interval_ms, 250);
    CHECK_INT(c.spool_segment_bytes, 10485760 / 8);
    ag_audit_config copy;
    CHECK_INT(ag_audit_config_copy(&copy, &c), 0);
    CHECK(copy.sinks[1].endpoint != c.sinks[1].endpoint);
    CHECK_STR(copy.sinks[1].endpoint, c.sinks[1].endpoint);
    CHECK_STR(copy.spool_dir, "/var/spool/aoai");
    ag_audit_config_free(&copy);
    ag_audit_config_free(&c);

    fails("{\"sinks\":[{\"type\":\"file\",\"path\":\"a\"}],\"spol_dir\":\"x\"}",
          "audit.spol_dir: unknown key (allowed here: sinks, spool_dir, capture, max_text_bytes_per_request, "
          "queue_capacity, spool_max_bytes, spool_segment_bytes, on_full, fsync, capture_rules)");
    fails("{\"sinks\":[{\"type\":\"file\",\"path\":\"a\",\"endpoint\":\"x\"}]}",
          "audit.sinks[0].endpoint: unknown key (allowed here: type, name, path, max_bytes, max_files)");
    fails("{\"sinks\":[{\"type\":\"kafka\"}]}",
          "audit.sinks[0].type: must be one of file, stdout, azure_monitor");
    fails("{\"sinks\":[{\"path\":\"a\"}]}", "audit.sinks[0].type: is required (file, stdout or azure_monitor)");
    fails("{\"sinks\":[]}", "audit.sinks: must be a non-empty array of sinks (file, stdout, azure_monitor)");
    fails("{\"sinks\":[{\"type\":\"file\"}]}", "audit.sinks[0].path: is required");
    fails("{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"http://dce.example.com\","
          "\"dcr_immutable_id\":\"dcr-1\",\"stream\":\"Custom-A\"}]}",
          "audit.sinks[0].endpoint: must use https (http is allowed to loopback only)");
    fails("{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"https://x?y=1\","
          "\"dcr_immutable_id\":\"dcr-1\",\"stream\":\"Custom-A\"}]}",
          "audit.sinks[0].endpoint: must not carry a query or user information");
    fails("{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"https://x\","
          "\"dcr_immutable_id\":\"dcr-1/../x\",\"stream\":\"Custom-A\"}]}",
          "audit.sinks[0].dcr_immutable_id: must be the DCR's immutableId (dcr-<32 hex>): letters, digits, '-'");
    fails("{\"sinks\":[{\"type\":\"azure_monitor\",\"endpoint\":\"https://x\","
          "\"dcr_immutable_id\":\"dcr-1\",\"stream\":\"Custom-A\",\"batch_max_bytes\":2000000}]}",
          "audit.sinks[0].batch_max_bytes: must be an integer from 4096 to 1048576");
    fails("{\"sinks\":[{\"type\":\"stdout\"}],\"fsync\":\"always\"}",
          "audit.fsync: must be \"batch\" or an interval in ms (1 to 60000)");
    fails("{\"sinks\":[{\"type\":\"stdout\"}],\"capture\":\"plain\"}",
          "audit.capture: must be one of full, redacted, hashed, off");
    fails("{\"sinks\":[{\"type\":\"stdout\"}],\"on_full\":\"block\"}",
          "audit.on_full: must be one of reject, drop_oldest");
    fails("{\"sinks\":[{\"type\":\"file\",\"path\":\"a\",\"name\":\"x\"},{\"type\":\"file\",\"path\":\"b\","
          "\"name\":\"x\"}]}",
          "audit.sinks[1].name: duplicates the name of sinks[0]");
    fails("{\"sinks\":[{\"type\":\"file\",\"path\":\"a\",\"name\":\"../etc\"}]}",
          "audit.sinks[0].name: must be letters, digits, '_', '-' or '.'");
    fails("{\"sinks\":[{\"type\":\"stdout\"},{\"type\":\"stdout\"}]}", "audit.sinks[1].type: only one stdout sink");
    fails("{\"sinks\":[{\"type\":\"stdout\"}],\"spool_max_bytes\":1048576,\"spool_segment_bytes\":1048576}",
          "audit.spool_segment_bytes: must be at most half of spool_max_bytes");
        /* capture_rules: first match wins, prefix patterns, errors name the key */
    {
        ag_audit_config cr;
        ag_conf_err ce;
        cJSON *jr = cJSON_Parse("{\"sinks\":[{\"type\":\"stdout\"}],\"capture\":\"redacted\","
                               "\"capture_rules\":[{\"scope\":{\"apps\":[\"batch\"]},\"capture\":\"off\"},"
                               "{\"scope\":{\"deployments\":[\"gpt-4o*\"],\"roles\":[\"HR\"]},\"capture\":\"hashed\"}]}");
        CHECK_INT(ag_audit_config_parse(jr, "audit", &cr, &ce), 0);
        CHECK_INT(cr.ncapture_rules, 2);
        CHECK_INT(ag_audit_capture_for(&cr, "t", "batch", "", "gpt-4o"), AG_CAPTURE_OFF);
        CHECK_INT(ag_audit_capture_for(&cr, "t", "other", "Reader HR", "gpt-4o-mini"), AG_CAPTURE_HASHED);
        CHECK_INT(ag_audit_capture_for(&cr, "t", "other", "Reader", "gpt-4o-mini"), AG_CAPTURE_REDACTED);
        CHECK_INT(ag_audit_capture_for(&cr, "t", "other", "HR", "o3"), AG_CAPTURE_REDACTED);
        ag_audit_config_free(&cr);
        cJSON_Delete(jr);
        jr = cJSON_Parse("{\"sinks\":[{\"type\":\"stdout\"}],\"capture_rules\":[{\"scope\":{\"app\":[]},\"capture\":\"off\"}]}");
        CHECK_INT(ag_audit_config_parse(jr, "audit", &cr, &ce), -1);
        CHECK(strstr(ce.msg, "audit.capture_rules[0].scope.app: unknown key") == ce.msg);
        cJSON_Delete(jr);
    }
    return CHECK_DONE();
}
