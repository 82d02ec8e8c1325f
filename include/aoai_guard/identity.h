/* Who is calling: the identity the auth stage establishes and the later stages (limits, policy,
 * audit, access log) key on. Fixed-size fields: filling one never allocates. */
#ifndef AOAI_GUARD_IDENTITY_H
#define AOAI_GUARD_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>

#define AG_ID_GUID_LEN 40    /* a GUID is 36 chars */
#define AG_ID_NAME_LEN 256
#define AG_ID_LIST_LEN 1024  /* roles / scopes, space separated */

typedef enum ag_identity_kind {
    AG_IDENTITY_ANONYMOUS = 0, /* auth disabled */
    AG_IDENTITY_USER,          /* delegated Entra token */
    AG_IDENTITY_APP,           /* app-only Entra token (idtyp=app) */
    AG_IDENTITY_API_KEY,       /* inbound api-key mode, a named identity from config */
} ag_identity_kind;

typedef struct ag_identity {
    ag_identity_kind kind;
    char tid[AG_ID_GUID_LEN];     /* tenant */
    char oid[AG_ID_GUID_LEN];     /* object id of the user or service principal */
    char app[AG_ID_GUID_LEN];     /* client app: azp (v2) or appid (v1) */
    char upn[AG_ID_NAME_LEN];     /* upn / preferred_username / unique_name: display only */
    char name[AG_ID_NAME_LEN];    /* api-key mode: the configured identity name */
    char roles[AG_ID_LIST_LEN];   /* app roles, space separated */
    char scp[AG_ID_LIST_LEN];     /* delegated scopes, space separated */
    long long exp;                /* token expiry, Unix seconds (0: none) */
} ag_identity;

/* True when the space-separated list contains word exactly. */
bool ag_identity_list_has(const char *list, const char *word);

/* Short name of the kind: "anonymous", "user", "app", "api_key". */
const char *ag_identity_kind_str(ag_identity_kind kind);

#endif
