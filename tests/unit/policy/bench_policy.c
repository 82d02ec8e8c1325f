/* Micro-benchmark of request inspection (not a test: timing does not belong in unit tests).
 *
 * Two rule sets, each: every built-in detector (PII redact, secrets block, IPs flag), the
 * prompt-injection score, and 50 regex rules. Set A: 48 regexes carry a literal the prefilter
 * uses (2 have only a 2-byte literal and run on every text). Set B: 10 of the 50 are replaced by
 * regexes with no usable literal, so 12 run on every text (the worst realistic case).
 * Prompts: a short system message plus a user message of English prose of 1, 4 and 16 KB.
 * Prints ns per inspection for a clean prompt (verdict allow) and for one with two e-mail
 * addresses (verdict modified: redaction plus re-serialisation; the per-iteration copy of the
 * tree is timed separately and subtracted). Times are thread CPU time, median and best of
 * batches of 16 (a shared machine's other load does not count, its cache pressure does).
 * Usage: bench_policy [CPU milliseconds per case, default 400] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aoai_guard/policy.h"

/* Thread CPU time: other processes on a shared machine do not inflate it by preempting us. */
static double now_ns(void)
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

static const char *const detectors_redact[] = {"email", "phone", "credit_card", "us_ssn", "iban",
                                               NULL};
static const char *const detectors_block[] = {
    "azure_storage_key", "azure_connection_string", "azure_openai_key", "azure_sas_token",
    "aws_access_key", "github_token", "private_key", "jwt", NULL};

static size_t append(char *buf, size_t cap, size_t used, const char *s)
{
    size_t n = strlen(s);
    if (used + n + 1 > cap) {
        fprintf(stderr, "buffer too small\n");
        exit(1);
    }
    memcpy(buf + used, s, n + 1);
    return used + n;
}

/* with_literal_less: the last 10 regex rules have no literal the prefilter can use (they run on
 * every text); otherwise they do. */
static char *policy_json(int with_literal_less)
{
    size_t cap = 64 * 1024, used = 0;
    char *b = malloc(cap), item[512];
    used = append(b, cap, used, "{\"rules\":[");
    int first = 1;
    for (size_t k = 0; detectors_redact[k]; k++) {
        snprintf(item, sizeof item, "%s{\"name\":\"pii-%s\",\"detector\":\"%s\",\"action\":"
                 "\"redact\",\"apply_to\":\"both\"}", first ? "" : ",", detectors_redact[k],
                 detectors_redact[k]);
        used = append(b, cap, used, item);
        first = 0;
    }
    for (size_t k = 0; detectors_block[k]; k++) {
        snprintf(item, sizeof item, ",{\"name\":\"secret-%s\",\"detector\":\"%s\",\"action\":"
                 "\"block\",\"apply_to\":\"both\"}", detectors_block[k], detectors_block[k]);
        used = append(b, cap, used, item);
    }
    used = append(b, cap, used, ",{\"name\":\"ip4\",\"detector\":\"ipv4\",\"action\":\"flag\"},"
                                "{\"name\":\"ip6\",\"detector\":\"ipv6\",\"action\":\"flag\"},"
                                "{\"name\":\"inj\",\"detector\":\"prompt_injection\",\"action\":"
                                "\"flag\",\"threshold\":3}");
    static const char *const codenames[] = {"falcon", "osprey", "kestrel", "harrier", "merlin",
                                            "condor", "peregrine", "gyrfalcon", "buzzard", "kite",
                                            "heron", "egret", "bittern", "plover", "curlew",
                                            "godwit", "dunlin", "knot", "stint", "sanderling"};
    for (int k = 0; k < 20; k++) {
        snprintf(item, sizeof item, ",{\"name\":\"codename-%d\",\"regex\":\"\\\\bproject[-_ ]?%s"
                 "\\\\b\",\"case_insensitive\":true,\"action\":\"flag\"}", k, codenames[k]);
        used = append(b, cap, used, item);
    }
    static const char *const tickets[] = {"ACME-\\\\d{6}", "INC\\\\d{7}", "EMP-\\\\d{5}",
                                          "CHG\\\\d{7}", "PRJ-[A-Z]{2}-\\\\d{4}", "CASE#\\\\d{8}",
                                          "SR-\\\\d{9}", "PO-\\\\d{8}", "INV-\\\\d{6}",
                                          "CTR-\\\\d{5}-[A-Z]"};
    for (int k = 0; k < 10; k++) {
        snprintf(item, sizeof item, ",{\"name\":\"ticket-%d\",\"regex\":\"\\\\b%s\\\\b\","
                 "\"action\":\"redact\"}", k, tickets[k]);
        used = append(b, cap, used, item);
    }
    for (int k = 0; k < 10; k++) {
        snprintf(item, sizeof item, ",{\"name\":\"host-%d\",\"regex\":\"\\\\b[a-z0-9-]+\\\\.corp%d"
                 "\\\\.contoso\\\\.com\\\\b\",\"action\":\"flag\"}", k, k);
        used = append(b, cap, used, item);
    }
    static const char *const nolit[] = {
        "\\\\b\\\\d{4}-\\\\d{4}-\\\\d{4}\\\\b", "\\\\b[A-Z]{3}\\\\d{8}\\\\b",
        "\\\\b(?:\\\\d{1,3}\\\\.){3}\\\\d{1,3}:\\\\d{2,5}\\\\b", "\\\\b[A-Z0-9]{24,}\\\\b",
        "\\\\b[0-9a-f]{40}\\\\b", "\\\\b\\\\d{2}/\\\\d{2}/\\\\d{4}\\\\b",
        "\\\\b[A-Z][a-z]+ [A-Z]\\\\. [A-Z][a-z]+\\\\b", "\\\\$\\\\d{1,3}(?:,\\\\d{3})+",
        "\\\\b[A-Z]{2}\\\\d{6}[A-Z]\\\\b", "\\\\b\\\\d{3}\\\\.\\\\d{3}\\\\.\\\\d{3}-\\\\d{2}\\\\b"};
    static const char *const withlit[] = {
        "\\\\bssn[:# ]+\\\\d{3}", "\\\\bconfidential\\\\b", "\\\\bapi[_-]?key\\\\s*[:=]",
        "\\\\bclient[_-]?secret\\\\b", "\\\\bsalary\\\\s+of\\\\s+\\\\$?\\\\d",
        "\\\\bmerger\\\\s+with\\\\b", "\\\\bpatient\\\\s+id\\\\b",
        "\\\\bdiagnos(?:is|ed)\\\\b", "\\\\bpassport\\\\s+(?:no|number)\\\\b",
        "\\\\bbank\\\\s+account\\\\b"};
    for (int k = 0; k < 10; k++) {
        snprintf(item, sizeof item, ",{\"name\":\"pattern-%d\",\"regex\":\"%s\",\"case_insensitive\":"
                 "%s,\"action\":\"flag\"}", k, with_literal_less ? nolit[k] : withlit[k],
                 with_literal_less ? "false" : "true");
        used = append(b, cap, used, item);
    }
    append(b, cap, used, "]}");
    return b;
}

static const char *const prose =
    "The quarterly review covers the migration of the billing service to the new cluster. "
    "Latency improved after we moved the cache closer to the workers, and the error budget "
    "for the month was not exceeded. Please summarise the main risks for the next quarter, "
    "including the dependency on the legacy reporting pipeline and the hiring plan for the "
    "platform team. Keep the tone neutral and the summary short enough for an executive "
    "audience; avoid jargon where a plain word will do. ";

static char *make_body(size_t user_bytes, int with_pii)
{
    size_t cap = user_bytes + 1024;
    char *text = malloc(cap);
    size_t n = 0, pl = strlen(prose);
    while (n + pl < user_bytes) {
        memcpy(text + n, prose, pl);
        n += pl;
    }
    text[n] = '\0';
    if (with_pii && n > 200) {
        const char *a = "mail anna.berg@example.com ", *b2 = " or jan@contoso.org ";
        memcpy(text + 100, a, strlen(a));
        memcpy(text + n - 100, b2, strlen(b2));
    }
    char *body = malloc(cap + 512);
    snprintf(body, cap + 512, "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":"
             "\"You are a helpful assistant for the finance team.\"},{\"role\":\"user\","
             "\"content\":\"%s\"}],\"max_tokens\":800}", text);
    free(text);
    return body;
}

static void run_sizes(const ag_policy *pol, double budget_ms)
{
    ag_policy_scratch *s = ag_policy_scratch_new();
    ag_identity id;
    memset(&id, 0, sizeof id);
    snprintf(id.app, sizeof id.app, "bench-app");
    ag_policy_call call = {&id, "gpt-4o", "chat/completions"};
    static const size_t sizes[] = {1024, 4096, 16384};
    for (size_t k = 0; k < 3; k++) {
        for (int pii = 0; pii < 2; pii++) {
            char *body = make_body(sizes[k], pii);
            cJSON *tree = cJSON_Parse(body);
            ag_policy_result r;
            /* warm-up and verdict check */
            cJSON *copy = cJSON_Duplicate(tree, 1);
            ag_policy_result_init(&r);
            ag_policy_inspect_request(pol, s, &call, copy, &r);
            ag_policy_verdict v = r.verdict;
            ag_policy_result_clear(&r);
            cJSON_Delete(copy);
            /* cost of the per-iteration copy, to subtract */
            double t0 = now_ns();
            long dup_iters = 0;
            while (now_ns() - t0 < budget_ms * 1e6 / 4) {
                cJSON_Delete(cJSON_Duplicate(tree, 1));
                dup_iters++;
            }
            double dup_ns = (now_ns() - t0) / (double)dup_iters;
            /* batches of 16 inspections; report the median and the best batch */
            double batch[4096];
            size_t nb = 0;
            long iters = 0;
            double start = now_ns();
            while (now_ns() - start < budget_ms * 1e6 && nb < 4096) {
                double b0 = now_ns();
                for (int j = 0; j < 16; j++) {
                    cJSON *c = pii ? cJSON_Duplicate(tree, 1) : tree;
                    ag_policy_result_init(&r);
                    ag_policy_inspect_request(pol, s, &call, c, &r);
                    ag_policy_result_clear(&r);
                    if (pii)
                        cJSON_Delete(c);
                }
                batch[nb++] = (now_ns() - b0) / 16.0 - (pii ? dup_ns : 0.0);
                iters += 16;
            }
            qsort(batch, nb, sizeof batch[0], cmp_double);
            printf("  %5zu B user text, %-8s: median %7.0f ns, best %7.0f ns per inspection "
                   "(verdict %s, %ld runs)\n", sizes[k], pii ? "2 emails" : "clean",
                   batch[nb / 2], batch[0], ag_policy_verdict_name(v), iters);
            cJSON_Delete(tree);
            free(body);
        }
    }
    ag_policy_scratch_free(s);
}

int main(int argc, char **argv)
{
    double budget_ms = argc > 1 ? atof(argv[1]) : 400.0;
    for (int variant = 0; variant < 2; variant++) {
        char *pj = policy_json(variant == 1);
        cJSON *pconf = cJSON_Parse(pj);
        ag_conf_err err = {{0}};
        ag_policy *pol = NULL;
        if (!pconf || ag_policy_load(pconf, "policy", &pol, &err) != 0) {
            fprintf(stderr, "policy: %s\n", err.msg);
            return 1;
        }
        cJSON_Delete(pconf);
        free(pj);
        printf("rule set %c: %zu rules = 15 detectors + prompt_injection + 50 regex; %s\n",
               'A' + variant, ag_policy_rule_count(pol),
               variant ? "12 regexes run on every text (10 without a literal, 2 with a 2-byte one)"
                       : "2 regexes run on every text (2-byte literals), 48 behind the prefilter");
        run_sizes(pol, budget_ms);
        ag_policy_free(pol);
    }
    return 0;
}
