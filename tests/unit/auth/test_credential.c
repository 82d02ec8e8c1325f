/* credential building blocks: config parsing, resolution with the environment, request building,
 * response parsing, error summaries, refresh and retry arithmetic. No network. */
#include "aoai_guard/credential.h"
#include "check.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

static const char *const g_env[] = {
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", NULL,
};

static void clear_env(void)
{
    for (int i = 0; g_env[i]; i++)
        unsetenv(g_env[i]);
}

/* Parses json as the credential section; returns 0/-1 and leaves the message in err. */
static int parse(const char *json, ag_credential_config *cfg, ag_conf_err *err)
{
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        snprintf(err->msg, sizeof(err->msg), "test JSON does not parse");
        return -1;
    }
    err->msg[0] = '\0';
    int rc = ag_credential_config_parse(root, "credential", cfg, err);
    cJSON_Delete(root);
    return rc;
}

static int starts_with(const char *s, const char *p)
{
    return s && strncmp(s, p, strlen(p)) == 0;
}

static void test_config_parse(void)
{
    ag_credential_config c;
    ag_conf_err err;
    CHECK_INT(ag_credential_config_parse(NULL, "credential", &c, &err), 0);
    CHECK_INT(c.type, AG_CRED_DEFAULT);
    CHECK_INT(c.refresh_before_s, 300);
    CHECK_INT(c.timeout_ms, 10000);
    CHECK(c.tenant_id == NULL);
    ag_credential_config_free(&c);

    CHECK_INT(parse("{\"type\":\"client_secret\",\"tenant_id\":\"t1\",\"client_id\":\"c1\",\"client_secret\":\"s\","
                    "\"authority_host\":\"http://127.0.0.1:9\",\"refresh_before_s\":60,\"timeout_ms\":2000,"
                    "\"ca_file\":\"/etc/ca.pem\"}", &c, &err), 0);
    CHECK_INT(c.type, AG_CRED_CLIENT_SECRET);
    CHECK_STR(c.tenant_id, "t1");
    CHECK_STR(c.client_id, "c1");
    CHECK_STR(c.client_secret, "s");
    CHECK_STR(c.authority_host, "http://127.0.0.1:9");
    CHECK_STR(c.ca_file, "/etc/ca.pem");
    CHECK_INT(c.refresh_before_s, 60);
    CHECK_INT(c.timeout_ms, 2000);
    ag_credential_config_free(&c);

    CHECK_INT(parse("{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://10.0.0.1\","
                    "\"managed_identity_object_id\":\"oid\"}", &c, &err), 0);
    CHECK_INT(c.type, AG_CRED_MANAGED_IDENTITY);
    CHECK_STR(c.managed_identity_object_id, "oid");
    ag_credential_config_free(&c);

    CHECK_INT(parse("{\"client_secrets\":\"x\"}", &c, &err), -1);
    CHECK(starts_with(err.msg, "credential.client_secrets: unknown key (allowed here: type, tenant_id,"));
    CHECK_INT(parse("{\"type\":\"msi\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.type: must be one of default, workload_identity, managed_identity, client_secret");
    CHECK_INT(parse("{\"refresh_before_s\":0}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.refresh_before_s: must be an integer from 1 to 86400");
    CHECK_INT(parse("{\"timeout_ms\":\"5\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.timeout_ms: must be an integer");
    CHECK_INT(parse("{\"tenant_id\":\"\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.tenant_id: must not be empty");
    CHECK_INT(parse("{\"client_id\":5}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.client_id: must be a string");
    CHECK_INT(parse("{\"authority_host\":\"http://login.example.com/\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.authority_host: must use https (http is allowed only to 127.0.0.1/localhost)");
    CHECK_INT(parse("{\"authority_host\":\"ftp://x/\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.authority_host: must be an http(s) URL");
    CHECK_INT(parse("{\"authority_host\":\"http://localhost:8/\"}", &c, &err), 0);
    ag_credential_config_free(&c);
    CHECK_INT(parse("{\"imds_endpoint\":\"file:///x\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.imds_endpoint: must be an http(s) URL");
    CHECK_INT(parse("{\"managed_identity_client_id\":\"a\",\"managed_identity_resource_id\":\"b\"}", &c, &err), -1);
    CHECK(starts_with(err.msg, "credential.managed_identity_client_id: set at most one of"));
    CHECK_INT(parse("{\"type\":\"client_secret\",\"federated_token_file\":\"/f\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.federated_token_file: not used with type client_secret");
    CHECK_INT(parse("{\"type\":\"workload_identity\",\"client_secret\":\"x\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.client_secret: not used with type workload_identity");
    CHECK_INT(parse("{\"type\":\"managed_identity\",\"client_secret\":\"x\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.client_secret: not used with type managed_identity");
    CHECK_INT(parse("[1]", &c, &err), -1);
    CHECK_STR(err.msg, "credential: must be a JSON object");
    CHECK_INT(parse("{\"type\":\"default\",\"type\":\"client_secret\"}", &c, &err), -1);
    CHECK_STR(err.msg, "credential.type: duplicate key");
}

/* Parses + resolves; returns 0/-1. */
static int resolve(const char *json, ag_credential_settings *s, ag_conf_err *err)
{
    ag_credential_config c;
    if (parse(json, &c, err) != 0)
        return -1;
    int rc = ag_credential_resolve(&c, s, err);
    ag_credential_config_free(&c);
    return rc;
}

static void test_resolve(void)
{
    ag_credential_settings s;
    ag_conf_err err;
    clear_env();

    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"tenant1\",\"client_id\":\"cid\","
                      "\"client_secret\":\"sec\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_CLIENT_SECRET);
    CHECK_STR(s.token_url, "https://login.microsoftonline.com/tenant1/oauth2/v2.0/token");
    CHECK_STR(s.client_secret, "sec");
    CHECK_INT(s.refresh_before_s, 300);
    ag_credential_settings_free(&s);

    /* authority normalisation: trailing slash added once, scheme implied */
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"x\","
                      "\"authority_host\":\"http://127.0.0.1:99\"}", &s, &err), 0);
    CHECK_STR(s.token_url, "http://127.0.0.1:99/t/oauth2/v2.0/token");
    ag_credential_settings_free(&s);
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"x\","
                      "\"authority_host\":\"http://127.0.0.1:99/\"}", &s, &err), 0);
    CHECK_STR(s.token_url, "http://127.0.0.1:99/t/oauth2/v2.0/token");
    ag_credential_settings_free(&s);
    setenv("AZURE_AUTHORITY_HOST", "login.partner.microsoftonline.cn", 1);
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"x\"}",
                      &s, &err), 0);
    CHECK_STR(s.token_url, "https://login.partner.microsoftonline.cn/t/oauth2/v2.0/token");
    ag_credential_settings_free(&s);
    setenv("AZURE_AUTHORITY_HOST", "http://evil.example.com/", 1);
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"x\"}",
                      &s, &err), -1);
    CHECK_STR(err.msg, "credential.authority_host: (from AZURE_AUTHORITY_HOST) must use https (http is allowed "
                       "only to 127.0.0.1/localhost)");
    clear_env();

    /* missing pieces name the key and the env var */
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"t\",\"client_id\":\"c\"}", &s, &err), -1);
    CHECK_STR(err.msg, "credential.client_secret: required for type client_secret (set it or the environment "
                       "variable AZURE_CLIENT_SECRET)");
    CHECK_INT(resolve("{\"type\":\"workload_identity\",\"client_id\":\"c\",\"federated_token_file\":\"/f\"}", &s,
                      &err), -1);
    CHECK_STR(err.msg, "credential.tenant_id: required for type workload_identity (set it or the environment "
                       "variable AZURE_TENANT_ID)");
    CHECK_INT(resolve("{\"type\":\"workload_identity\",\"tenant_id\":\"t\",\"client_id\":\"c\"}", &s, &err), -1);
    CHECK_STR(err.msg, "credential.federated_token_file: required for type workload_identity (set it or the "
                       "environment variable AZURE_FEDERATED_TOKEN_FILE)");
    CHECK_INT(resolve("{\"type\":\"client_secret\",\"tenant_id\":\"../x\",\"client_id\":\"c\",\"client_secret\":\"s\"}",
                      &s, &err), -1);
    CHECK_STR(err.msg, "credential.tenant_id: must be a tenant GUID or domain name");

    /* workload identity from the environment (what the AKS webhook injects) */
    setenv("AZURE_TENANT_ID", "tid-env", 1);
    setenv("AZURE_CLIENT_ID", "cid-env", 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token", 1);
    setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/", 1);
    CHECK_INT(resolve("{\"type\":\"workload_identity\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_WORKLOAD_IDENTITY);
    CHECK_STR(s.client_id, "cid-env");
    CHECK_STR(s.federated_token_file, "/var/run/secrets/azure/tokens/azure-identity-token");
    CHECK_STR(s.token_url, "https://login.microsoftonline.com/tid-env/oauth2/v2.0/token");
    ag_credential_settings_free(&s);
    /* config wins over env */
    CHECK_INT(resolve("{\"type\":\"workload_identity\",\"client_id\":\"cid-cfg\"}", &s, &err), 0);
    CHECK_STR(s.client_id, "cid-cfg");
    ag_credential_settings_free(&s);

    /* default: EnvironmentCredential (secret) first, then workload identity, then managed identity */
    CHECK_INT(resolve("{}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_WORKLOAD_IDENTITY);
    ag_credential_settings_free(&s);
    setenv("AZURE_CLIENT_SECRET", "env-secret", 1);
    CHECK_INT(resolve("{\"type\":\"default\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_CLIENT_SECRET);
    CHECK_STR(s.client_secret, "env-secret");
    ag_credential_settings_free(&s);
    unsetenv("AZURE_CLIENT_SECRET");
    unsetenv("AZURE_FEDERATED_TOKEN_FILE");
    CHECK_INT(resolve("{}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_IMDS);
    CHECK_STR(s.imds_endpoint, "http://169.254.169.254");
    CHECK_STR(s.mi_id_param, "client_id"); /* AZURE_CLIENT_ID names the user-assigned identity */
    CHECK_STR(s.mi_id_value, "cid-env");
    ag_credential_settings_free(&s);
    /* an explicit managed_identity type does not read AZURE_CLIENT_ID */
    CHECK_INT(resolve("{\"type\":\"managed_identity\",\"imds_endpoint\":\"http://127.0.0.1:5/\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_IMDS);
    CHECK_STR(s.imds_endpoint, "http://127.0.0.1:5");
    CHECK(s.mi_id_param == NULL);
    ag_credential_settings_free(&s);
    clear_env();
    CHECK_INT(resolve("{}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_IMDS);
    CHECK(s.mi_id_param == NULL);
    ag_credential_settings_free(&s);

    /* App Service / Container Apps when IDENTITY_ENDPOINT + IDENTITY_HEADER are set */
    setenv("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token", 1);
    setenv("IDENTITY_HEADER", "hdr", 1);
    CHECK_INT(resolve("{\"managed_identity_object_id\":\"oid\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_APP_SERVICE);
    CHECK_STR(s.identity_endpoint, "http://localhost:42356/msi/token");
    CHECK_STR(s.identity_header, "hdr");
    CHECK_STR(s.mi_id_param, "principal_id");
    ag_credential_settings_free(&s);
    CHECK_INT(resolve("{\"managed_identity_resource_id\":\"/sub/x\"}", &s, &err), 0);
    CHECK_STR(s.mi_id_param, "mi_res_id");
    ag_credential_settings_free(&s);
    unsetenv("IDENTITY_HEADER"); /* endpoint without header: App Service unavailable, IMDS it is */
    CHECK_INT(resolve("{\"managed_identity_resource_id\":\"/sub/x\"}", &s, &err), 0);
    CHECK_INT(s.source, AG_CRED_SRC_IMDS);
    CHECK_STR(s.mi_id_param, "msi_res_id");
    ag_credential_settings_free(&s);
    clear_env();
    CHECK_INT(resolve("{\"type\":\"managed_identity\",\"identity_endpoint\":\"http://127.0.0.1:1/msi/token\"}", &s,
                      &err), -1);
    CHECK_STR(err.msg, "credential.identity_header: required with identity_endpoint (set it or the environment "
                       "variable IDENTITY_HEADER)");
}

static void test_scope_to_resource(void)
{
    char r[128];
    CHECK_INT(ag_credential_scope_to_resource(AG_SCOPE_COGNITIVE, r, sizeof(r)), 0);
    CHECK_STR(r, "https://cognitiveservices.azure.com");
    CHECK_INT(ag_credential_scope_to_resource(AG_SCOPE_MONITOR, r, sizeof(r)), 0);
    CHECK_STR(r, "https://monitor.azure.com");
    CHECK_INT(ag_credential_scope_to_resource("https://monitor.azure.com/.default", r, sizeof(r)), 0);
    CHECK_STR(r, "https://monitor.azure.com");
    CHECK_INT(ag_credential_scope_to_resource("api://abc/.default", r, sizeof(r)), 0);
    CHECK_STR(r, "api://abc");
    CHECK_INT(ag_credential_scope_to_resource("api://abc/read", r, sizeof(r)), 0);
    CHECK_STR(r, "api://abc/read");
    CHECK_INT(ag_credential_scope_to_resource("", r, sizeof(r)), -1);
    CHECK_INT(ag_credential_scope_to_resource(AG_SCOPE_COGNITIVE, r, 10), -1);
    CHECK_INT(ag_credential_scope_to_resource(AG_SCOPE_COGNITIVE, r, 36), 0); /* 35 chars + NUL fits */
    CHECK_INT(ag_credential_scope_to_resource(AG_SCOPE_COGNITIVE, r, 35), -1);
}

static void test_build(void)
{
    ag_credential_settings s;
    ag_credential_req rq;
    memset(&s, 0, sizeof(s));
    s.source = AG_CRED_SRC_CLIENT_SECRET;
    s.client_id = "cid";
    s.client_secret = "p@ss w+rd&=";
    s.token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_COGNITIVE, NULL, &rq), 0);
    CHECK_STR(rq.method, "POST");
    CHECK_STR(rq.url, "https://login.microsoftonline.com/t/oauth2/v2.0/token");
    CHECK_STR(rq.body, "client_id=cid&scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default"
                       "&client_secret=p%40ss%20w%2Brd%26%3D&grant_type=client_credentials");
    CHECK_INT(rq.body_len, strlen(rq.body));
    CHECK_STR(rq.headers[0], "Content-Type: application/x-www-form-urlencoded");
    CHECK_STR(rq.headers[1], "Accept: application/json");
    CHECK(rq.headers[2] == NULL);
    ag_credential_req_free(&rq);
    CHECK(rq.url == NULL && rq.body == NULL);

    s.source = AG_CRED_SRC_WORKLOAD_IDENTITY;
    s.client_secret = NULL;
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_MONITOR, NULL, &rq), -1); /* assertion needed */
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_MONITOR, "eyJ.a-b_c.d", &rq), 0);
    CHECK_STR(rq.body, "client_id=cid&scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default"
                       "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
                       "&client_assertion=eyJ.a-b_c.d&grant_type=client_credentials");
    ag_credential_req_free(&rq);

    s.source = AG_CRED_SRC_CLIENT_SECRET; /* without a secret */
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_MONITOR, NULL, &rq), -1);

    memset(&s, 0, sizeof(s));
    s.source = AG_CRED_SRC_IMDS;
    s.imds_endpoint = "http://127.0.0.1:5";
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_MONITOR, NULL, &rq), 0);
    CHECK_STR(rq.method, "GET");
    CHECK_STR(rq.url, "http://127.0.0.1:5/metadata/identity/oauth2/token?api-version=2018-02-01"
                      "&resource=https%3A%2F%2Fmonitor.azure.com");
    CHECK(rq.body == NULL);
    CHECK_STR(rq.headers[0], "Metadata: true");
    CHECK(rq.headers[1] == NULL);
    ag_credential_req_free(&rq);
    s.mi_id_param = "client_id";
    s.mi_id_value = "a b";
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_COGNITIVE, NULL, &rq), 0);
    CHECK_STR(rq.url, "http://127.0.0.1:5/metadata/identity/oauth2/token?api-version=2018-02-01"
                      "&resource=https%3A%2F%2Fcognitiveservices.azure.com&client_id=a%20b");
    ag_credential_req_free(&rq);

    memset(&s, 0, sizeof(s));
    s.source = AG_CRED_SRC_APP_SERVICE;
    s.identity_endpoint = "http://127.0.0.1:7/msi/token";
    s.identity_header = "hdr-1";
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_COGNITIVE, NULL, &rq), 0);
    CHECK_STR(rq.url, "http://127.0.0.1:7/msi/token?resource=https%3A%2F%2Fcognitiveservices.azure.com"
                      "&api-version=2019-08-01");
    CHECK_STR(rq.headers[0], "X-IDENTITY-HEADER: hdr-1");
    ag_credential_req_free(&rq);
    s.identity_endpoint = "http://127.0.0.1:7/msi/token?x=1";
    s.mi_id_param = "principal_id";
    s.mi_id_value = "oid";
    CHECK_INT(ag_credential_build_request(&s, AG_SCOPE_COGNITIVE, NULL, &rq), 0);
    CHECK_STR(rq.url, "http://127.0.0.1:7/msi/token?x=1&resource=https%3A%2F%2Fcognitiveservices.azure.com"
                      "&api-version=2019-08-01&principal_id=oid");
    ag_credential_req_free(&rq);
    CHECK_INT(ag_credential_build_request(&s, "", NULL, &rq), -1);
}

static int parse_tok(const char *body, long long now, ag_token_response *tr, char *err, size_t errlen)
{
    return ag_credential_parse_token(body, strlen(body), now, tr, err, errlen);
}

static void test_parse_token(void)
{
    ag_token_response tr;
    char err[200];
    /* Entra: numeric expires_in */
    CHECK_INT(parse_tok("{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,"
                        "\"access_token\":\"abc.def\"}", 1000, &tr, err, sizeof(err)), 0);
    CHECK_STR(tr.access_token, "abc.def");
    CHECK_INT(tr.expires_on, 4599);
    ag_token_response_free(&tr);
    CHECK(tr.access_token == NULL);
    /* IMDS: strings; expires_in (relative to our clock) wins over expires_on */
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"refresh_token\":\"\",\"expires_in\":\"3600\","
                        "\"expires_on\":\"99999\",\"not_before\":\"1000\",\"resource\":\"https://x\","
                        "\"token_type\":\"Bearer\"}", 1000, &tr, err, sizeof(err)), 0);
    CHECK_INT(tr.expires_on, 4600);
    ag_token_response_free(&tr);
    /* App Service 2019-08-01: only expires_on, a string */
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_on\":\"5000\",\"resource\":\"r\",\"token_type\":\"Bearer\"}",
                        1000, &tr, err, sizeof(err)), 0);
    CHECK_INT(tr.expires_on, 5000);
    ag_token_response_free(&tr);
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_on\":5000}", 1000, &tr, err, sizeof(err)), 0);
    CHECK_INT(tr.expires_on, 5000);
    ag_token_response_free(&tr);
    /* token_type compared case-insensitively */
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":5,\"token_type\":\"bearer\"}", 0, &tr, err,
                        sizeof(err)), 0);
    ag_token_response_free(&tr);

    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_on\":\"12ab\"}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "expires_on is not a Unix time");
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":0}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "expires_in is not a positive number of seconds");
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":-5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":1.5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":\"\"}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":\"t\"}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "token response has neither expires_in nor expires_on");
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_on\":\"999\"}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "token already expired (expires 1 s ago)");
    CHECK_INT(parse_tok("{\"expires_in\":5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "token response has no access_token string");
    CHECK_INT(parse_tok("{\"access_token\":\"\",\"expires_in\":5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":7,\"expires_in\":5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":\"secret tok\",\"expires_in\":5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "access_token contains a byte outside printable ASCII (at 6)");
    CHECK(strstr(err, "secret") == NULL); /* never echo the token */
    CHECK_INT(parse_tok("{\"access_token\":\"a\\r\\nX-Evil: 1\",\"expires_in\":5}", 1000, &tr, err, sizeof(err)), -1);
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":5,\"token_type\":\"pop\"}", 1000, &tr, err,
                        sizeof(err)), -1);
    CHECK_STR(err, "token_type is not Bearer");
    CHECK_INT(parse_tok("{\"access_token\":\"a\",\"access_token\":\"b\",\"expires_in\":5}", 1000, &tr, err,
                        sizeof(err)), -1);
    CHECK(strstr(err, "duplicate") != NULL);
    CHECK_INT(parse_tok("not json", 1000, &tr, err, sizeof(err)), -1);
    CHECK(starts_with(err, "token response is not valid JSON"));
    CHECK_INT(parse_tok("[\"access_token\"]", 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "token response is not a JSON object");
    CHECK_INT(parse_tok("{\"access_token\":\"t\",\"expires_in\":5} x", 1000, &tr, err, sizeof(err)), -1);

    size_t big = AG_CREDENTIAL_MAX_TOKEN + 1;
    char *body = malloc(big + 64);
    int n = snprintf(body, big + 64, "{\"expires_in\":5,\"access_token\":\"");
    memset(body + n, 'a', big);
    strcpy(body + n + big, "\"}");
    CHECK_INT(parse_tok(body, 1000, &tr, err, sizeof(err)), -1);
    CHECK_STR(err, "access_token is 16385 bytes, more than 16384");
    body[n + big - 1] = '"';
    body[n + big] = '}';
    body[n + big + 1] = '\0';
    CHECK_INT(parse_tok(body, 1000, &tr, err, sizeof(err)), 0); /* exactly the limit */
    CHECK_INT(strlen(tr.access_token), AG_CREDENTIAL_MAX_TOKEN);
    ag_token_response_free(&tr);
    free(body);
}

static void test_describe_error(void)
{
    char out[300];
    const char *entra = "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret "
                        "provided.\\r\\nTrace ID: x\",\"error_codes\":[7000215],\"timestamp\":\"2024-01-01 00:00:00Z\","
                        "\"trace_id\":\"x\",\"correlation_id\":\"y\"}";
    ag_credential_describe_error(entra, strlen(entra), out, sizeof(out));
    CHECK_STR(out, "invalid_client: AADSTS7000215: Invalid client secret provided.  Trace ID: x");
    const char *imds = "{\"error\":\"bad_request_102\",\"error_description\":\"Required metadata header not specified\"}";
    ag_credential_describe_error(imds, strlen(imds), out, sizeof(out));
    CHECK_STR(out, "bad_request_102: Required metadata header not specified");
    const char *appsvc = "{\"statusCode\":400,\"message\":\"Unable to load the proper Managed Identity.\"}";
    ag_credential_describe_error(appsvc, strlen(appsvc), out, sizeof(out));
    CHECK_STR(out, "Unable to load the proper Managed Identity.");
    const char *nested = "{\"error\":{\"code\":\"x\",\"message\":\"y\"}}";
    ag_credential_describe_error(nested, strlen(nested), out, sizeof(out));
    CHECK_STR(out, "x: y");
    ag_credential_describe_error("<html>", 6, out, sizeof(out));
    CHECK_STR(out, "(no error body)");
    ag_credential_describe_error("", 0, out, sizeof(out));
    CHECK_STR(out, "(no error body)");
    char longd[400];
    int n = snprintf(longd, sizeof(longd), "{\"error\":\"e\",\"error_description\":\"");
    memset(longd + n, 'd', 250);
    strcpy(longd + n + 250, "\"}");
    ag_credential_describe_error(longd, strlen(longd), out, sizeof(out));
    CHECK_INT(strlen(out), 3 + 200 + 3);
    CHECK(strcmp(out + strlen(out) - 3, "...") == 0);
    char small[8];
    ag_credential_describe_error(imds, strlen(imds), small, sizeof(small));
    CHECK_STR(small, "bad_req");
}

static void test_scheduling(void)
{
    /* one-hour Entra token: 300 s before expiry, minus up to 10% of the margin */
    CHECK_INT(ag_credential_refresh_delay(1000, 4599, 300, 0.0), 3299);
    CHECK_INT(ag_credential_refresh_delay(1000, 4599, 300, 0.5), 3284);
    CHECK_INT(ag_credential_refresh_delay(1000, 4599, 300, 0.999), 3270);
    /* short lifetimes: never refresh in the first half */
    CHECK_INT(ag_credential_refresh_delay(1000, 1010, 300, 0.0), 5);
    CHECK_INT(ag_credential_refresh_delay(1000, 1004, 2, 0.0), 2);
    CHECK_INT(ag_credential_refresh_delay(0, 400, 300, 0.0), 200);
    CHECK_INT(ag_credential_refresh_delay(1000, 1001, 300, 0.0), 1);
    CHECK_INT(ag_credential_refresh_delay(1000, 900, 300, 0.0), 1);
    /* long-lived (IMDS 24 h): at half-life like MSAL */
    CHECK_INT(ag_credential_refresh_delay(0, 86400, 300, 0.0), 43200);
    CHECK_INT(ag_credential_refresh_delay(0, 86400, 300, 0.5), 41040);
    CHECK_INT(ag_credential_refresh_delay(0, 7200, 300, 0.0), 3600);
    CHECK_INT(ag_credential_refresh_delay(0, 7199, 300, 0.0), 6899);
    CHECK_INT(ag_credential_refresh_delay(0, 86400, 50000, 0.0), 36400);

    CHECK(ag_credential_retryable(0));
    CHECK(ag_credential_retryable(404));
    CHECK(ag_credential_retryable(408));
    CHECK(ag_credential_retryable(410));
    CHECK(ag_credential_retryable(429));
    CHECK(ag_credential_retryable(500));
    CHECK(ag_credential_retryable(503));
    CHECK(ag_credential_retryable(599));
    CHECK(!ag_credential_retryable(200));
    CHECK(!ag_credential_retryable(400));
    CHECK(!ag_credential_retryable(401));
    CHECK(!ag_credential_retryable(403));
    CHECK(!ag_credential_retryable(600));

    CHECK_INT(ag_credential_retry_delay_ms(1, 500, NULL, 0, 1.0), 2000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 500, NULL, 0, 0.0), 1600);
    CHECK_INT(ag_credential_retry_delay_ms(2, 0, NULL, 0, 1.0), 6000);
    CHECK_INT(ag_credential_retry_delay_ms(3, 404, NULL, 0, 1.0), 14000);
    CHECK_INT(ag_credential_retry_delay_ms(4, 410, NULL, 0, 1.0), 30000);
    CHECK_INT(ag_credential_retry_delay_ms(9, 503, NULL, 0, 1.0), 30000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 400, NULL, 0, 1.0), 60000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 401, NULL, 0, 0.0), 60000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 429, "20", 0, 1.0), 20000);
    CHECK_INT(ag_credential_retry_delay_ms(3, 429, "1", 0, 1.0), 14000); /* the longer wait wins */
    CHECK_INT(ag_credential_retry_delay_ms(1, 429, "100000", 0, 1.0), 300000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 429, "abc", 0, 1.0), 2000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 429, "-5", 0, 1.0), 2000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 429, "5x", 0, 1.0), 2000);
    long long t = (long long)curl_getdate("Sun, 06 Nov 1994 08:49:37 GMT", NULL);
    CHECK(t > 0);
    CHECK_INT(ag_credential_retry_delay_ms(1, 503, "Sun, 06 Nov 1994 08:49:37 GMT", t - 45, 1.0), 45000);
    CHECK_INT(ag_credential_retry_delay_ms(1, 503, "Sun, 06 Nov 1994 08:49:37 GMT", t + 45, 1.0), 2000);
}

int main(void)
{
    test_config_parse();
    test_resolve();
    test_scope_to_resource();
    test_build();
    test_parse_token();
    test_describe_error();
    test_scheduling();
    return CHECK_DONE();
}
