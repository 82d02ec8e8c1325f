/* Built-in prompt-injection signals and their weights (documented in docs/policy.md).
 *
 * The score of a request is the sum of the weights of the distinct signals seen in any of its
 * texts; a prompt_injection rule fires when the score reaches its threshold. Pattern signals run
 * on the case-folded normalised text, and only when one of their anchor literals occurs (the
 * anchors are part of the policy's single literal scan). */
#include <string.h>

#include "policy/policy_int.h"

typedef struct sig_def {
    const char *name;
    int weight;
    const char *pattern;           /* NULL: counted by the normaliser */
    const char *anchors[16];       /* NULL-terminated, lower case */
} sig_def;

static const sig_def sig_defs[] = {
    [AG_SIG_HIDDEN_TAGS] = {"hidden_tag_characters", 2, NULL, {NULL}},
    [AG_SIG_BIDI] = {"bidi_controls", 1, NULL, {NULL}},
    {"instruction_override", 3,
     "\\b(?:ignore|disregard|forget|override|bypass|skip|abandon|neglect)\\b"
     "(?:[\\s,]+(?:all|any|every|the|your|my|of|these|those|previous|prior|above|earlier|"
     "preceding|former|initial|original|system|developer|safety|existing|current|old|given|"
     "aforementioned)\\b){0,5}"
     "[\\s,]+(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|"
     "constraints|restrictions|programming|polic(?:y|ies)|messages?|context)\\b",
     {"ignore", "disregard", "forget", "override", "bypass", "skip", "abandon", "neglect", NULL}},
    {"system_prompt_exfiltration", 2,
     "\\b(?:reveal|show|print|repeat|output|display|leak|dump|disclose|tell me|what (?:is|are))\\b"
     "[^.!?\\n]{0,40}?\\b(?:system prompt|system message|initial (?:prompt|instructions)|"
     "hidden (?:prompt|instructions)|original (?:prompt|instructions)|your instructions)\\b",
     {"system prompt", "system message", "initial prompt", "initial instructions",
      "hidden prompt", "hidden instructions", "original prompt", "original instructions",
      "your instructions", NULL}},
    {"persona_override", 3,
     "\\b(?:you are|you're|you will be|act as|pretend to be|become)\\s+(?:now\\s+)?"
     "(?:a\\s+|an\\s+)?(?:dan|stan|dude|jailbroken|unrestricted|unfiltered|uncensored|evil|amoral)"
     "\\b|\\bdo anything now\\b",
     {"dan", "stan", "dude", "jailbroken", "unrestricted", "unfiltered", "uncensored", "evil",
      "amoral", "do anything now", NULL}},
    {"developer_mode", 2,
     "\\b(?:developer|dev|god|debug|admin|sudo|jailbreak|unrestricted|dan) mode\\b"
     "|\\bjailbreak(?:s|ed|ing)?\\b",
     {"developer mode", "dev mode", "god mode", "debug mode", "admin mode", "sudo mode",
      "jailbreak", "unrestricted mode", "dan mode", NULL}},
    {"roleplay_jailbreak", 1,
     "\\b(?:pretend (?:you are|you're|to be)|role-?play as|act as if|imagine you are|"
     "stay in character|you are no longer|from now on,? you|hypothetically,? if you had no)\\b",
     {"pretend", "roleplay as", "role-play as", "act as if", "imagine you are",
      "stay in character", "you are no longer", "from now on", "hypothetically", NULL}},
    {"no_restrictions", 1,
     "\\b(?:no|without(?: any)?|free (?:of|from)|remove (?:all|your|any)|disable (?:all|your|any))"
     " (?:ethical |moral |safety |content )?(?:restrictions|limitations|limits|filters|filtering|"
     "censorship|guidelines|guardrails|constraints)\\b",
     {"restrictions", "limitations", "limits", "filters", "filtering", "censorship",
      "guidelines", "guardrails", "constraints", NULL}},
    {"role_markers", 2,
     "<\\|im_(?:start|end)\\|>|<\\|(?:system|endoftext|assistant|user)\\|>|\\[/?inst\\]|"
     "<</?sys>>|###\\s*(?:system|instruction)|</?system>",
     {"<|", "[inst]", "[/inst]", "<<sys>>", "<</sys>>", "###", "<system>", "</system>", NULL}},
};

#define NSIG (sizeof sig_defs / sizeof sig_defs[0])

int ag_pol_signals_compile(ag_policy *pol, ag_conf_err *err)
{
    _Static_assert(sizeof sig_defs / sizeof sig_defs[0] <= AG_POL_MAX_SIGNALS, "too many signals");
    for (size_t k = 0; k < NSIG; k++) {
        pol->sig[k].name = sig_defs[k].name;
        pol->sig[k].weight = sig_defs[k].weight;
        pol->sig[k].re = NULL;
        if (!sig_defs[k].pattern)
            continue;
        int ec;
        PCRE2_SIZE eo;
        pol->sig[k].re = pcre2_compile((PCRE2_SPTR)sig_defs[k].pattern, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF, &ec, &eo, NULL);
        if (!pol->sig[k].re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return ag_conf_fail(err, "", NULL, "built-in injection signal %s: %s at offset %zu",
                                sig_defs[k].name, (const char *)msg, (size_t)eo);
        }
        pol->sig[k].jit = pcre2_jit_compile(pol->sig[k].re, PCRE2_JIT_COMPLETE) == 0;
    }
    pol->nsig = NSIG;
    return 0;
}

int ag_pol_signals_add_literals(ag_policy *pol)
{
    for (size_t k = 0; k < NSIG; k++)
        for (size_t a = 0; sig_defs[k].anchors[a]; a++)
            if (ag_litset_add(pol->lits, sig_defs[k].anchors[a], strlen(sig_defs[k].anchors[a]),
                              AG_LIT_ID(AG_LIT_SIGNAL, k)) != 0)
                return -1;
    return 0;
}

int ag_pol_signals_score(const ag_policy *pol, uint32_t seen)
{
    int score = 0;
    for (size_t k = 0; k < pol->nsig; k++)
        if (seen & (1u << k))
            score += pol->sig[k].weight;
    return score;
}
