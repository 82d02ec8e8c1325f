/* Built-in detectors for personal data and secrets, run in one pass over normalised text.
 *
 * ag_detect_scan() walks the text once; at each word start it tries only the detectors whose
 * first character fits (digits: phone / card / SSN / IPv4; "eyJ": JWT; "AKIA": AWS; '@': email,
 * ...), so cost grows with the text, not with the number of detectors. Every detector validates
 * what it finds (Luhn, IBAN mod-97 with per-country length, SSN ranges, inet_pton, JWT header JSON)
 * to keep false positives down. The exact rules of each detector are in docs/policy.md.
 * Detectors see text that ag_norm_run() produced (ASCII folds applied, white space collapsed). */
#ifndef AOAI_GUARD_DETECT_H
#define AOAI_GUARD_DETECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum ag_detector {
    AG_DET_EMAIL = 0,
    AG_DET_PHONE,
    AG_DET_CREDIT_CARD,
    AG_DET_US_SSN,
    AG_DET_IBAN,
    AG_DET_IPV4,
    AG_DET_IPV6,
    AG_DET_AZURE_STORAGE_KEY,        /* 88-char base64 account key ending "==" */
    AG_DET_AZURE_CONNECTION_STRING,  /* AccountKey= / SharedAccessSignature= / SharedAccessKey= */
    AG_DET_AZURE_KEY,                /* Azure OpenAI / Cognitive Services key: 32 hex characters */
    AG_DET_AZURE_SAS_TOKEN,          /* query string with sv=... and sig=... */
    AG_DET_AWS_ACCESS_KEY,           /* AKIA / ASIA + 16 */
    AG_DET_GITHUB_TOKEN,             /* ghp_ gho_ ghu_ ghs_ ghr_ github_pat_ */
    AG_DET_PRIVATE_KEY,              /* PEM private key block */
    AG_DET_JWT,
    AG_DET_SCAN_COUNT,               /* detectors above are found by ag_detect_scan() */
    AG_DET_PROMPT_INJECTION = AG_DET_SCAN_COUNT, /* scored by injection.h, not by the scan */
    AG_DET_COUNT
} ag_detector;

#define AG_DET_BIT(d) (1u << (unsigned)(d))

typedef struct ag_detect_hit {
    ag_detector det;
    size_t start; /* byte offsets in the scanned text */
    size_t end;
    bool open;    /* the match runs to the end of the text and may continue (PEM without END) */
} ag_detect_hit;

/* Receives each hit; return nonzero to stop the scan. */
typedef int (*ag_detect_cb)(void *arg, const ag_detect_hit *hit);

/* Scans text[0..len) for the detectors in mask (AG_DET_BIT set) and reports every hit. Hits of
 * one detector never overlap; hits of different detectors may. Never allocates except to parse a
 * JWT candidate's header. */
void ag_detect_scan(const char *text, size_t len, uint32_t mask, ag_detect_cb cb, void *arg);
/* The same scan without the shortcut for plain lower-case words: the unit tests' reference. */
void ag_detect_scan_general(const char *text, size_t len, uint32_t mask, ag_detect_cb cb, void *arg);

/* The configuration name of a detector ("email", "credit_card", ...). */
const char *ag_detector_name(ag_detector d);

/* The detector with that configuration name, or -1. */
int ag_detector_lookup(const char *name);

/* True when the n ASCII digits pass the Luhn (mod 10) check. */
bool ag_luhn_valid(const char *digits, size_t n);

/* The IBAN length registered for a two-letter country code, or 0 when unknown. */
int ag_iban_country_length(const char *cc);

/* True for a compact IBAN (no spaces, upper case) of its country's length whose mod-97 is 1. */
bool ag_iban_valid(const char *iban, size_t len);

/* True when area-group-serial is a possible US SSN (not 000/666/9xx, group 00, serial 0000). */
bool ag_ssn_valid(unsigned area, unsigned group, unsigned serial);

#endif
