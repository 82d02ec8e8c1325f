/* Helpers over ag_identity (see identity.h). */
#include "aoai_guard/identity.h"

#include <string.h>

bool ag_identity_list_has(const char *list, const char *word)
{
    size_t wl = strlen(word);
    if (wl == 0)
        return false;
    for (const char *p = list; *p;) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ' ')
            e++;
        if ((size_t)(e - p) == wl && memcmp(p, word, wl) == 0)
            return true;
        p = e;
    }
    return false;
}

const char *ag_identity_kind_str(ag_identity_kind kind)
{
    switch (kind) {
    case AG_IDENTITY_USER: return "user";
    case AG_IDENTITY_APP: return "app";
    case AG_IDENTITY_API_KEY: return "api_key";
    case AG_IDENTITY_ANONYMOUS: break;
    }
    return "anonymous";
}
