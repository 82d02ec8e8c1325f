#!/usr/bin/env node
/* Recomputes the "truth" of every item in corpus.json with the real tiktoken (npm package
 * "tiktoken" 1.0.22: the WASM build of OpenAI's tiktoken with the o200k_base and cl100k_base ranks).
 * Not run by the tests: run it by hand after editing the corpus.
 *   mkdir -p /tmp/tk && (cd /tmp/tk && npm install tiktoken@1.0.22)
 *   NODE_PATH=/tmp/tk/node_modules node tests/unit/limit/corpus/derive_counts.cjs
 *
 * How a request's prompt tokens are counted (per encoding):
 *  - embeddings: sum of the tokens of each input string; token-id arrays count their length. This is
 *    what the service reports as usage.prompt_tokens: method "exact".
 *  - completions: tokens of the prompt string(s): method "exact".
 *  - chat: the OpenAI cookbook rule ("How to count tokens with tiktoken", gpt-4o family):
 *    3 per message + tokens of each string field (role, content, name) + 1 per name, + 3 for the
 *    reply priming. Text content parts count their text. Method "cookbook" for plain messages.
 *    Image parts with detail "low" count 85 (OpenAI vision pricing) - "cookbook+vision".
 *  - tool definitions: the cookbook's num_tokens_for_tools (gpt-4o constants: 7 per function,
 *    3 for the properties block, 3 per property, -3 + 3 per item for enums, 12 at the end).
 *    Assistant tool_calls count name + arguments + 3 each; tool messages count tool_call_id.
 *    The service's real formatting of tools is not published: method "approx".
 *  - responses: the chat rule applied to instructions (as a system message) and input items. The
 *    service's formatting is not published: method "approx". */
'use strict';
const fs = require('fs');
const path = require('path');
const { get_encoding } = require('tiktoken');

const file = path.join(__dirname, 'corpus.json');
const doc = JSON.parse(fs.readFileSync(file, 'utf8'));

function counter(enc) {
  const tok = (s) => enc.encode(s).length;
  let method = 'exact';
  const worse = (m) => {
    const order = ['exact', 'cookbook', 'cookbook+vision', 'approx'];
    if (order.indexOf(m) > order.indexOf(method)) method = m;
  };
  function content(c) {
    if (c === null || c === undefined) return 0;
    if (typeof c === 'string') return tok(c);
    let n = 0;
    for (const part of c) {
      if (part.type === 'text' || part.type === 'input_text' || part.type === 'output_text') n += tok(part.text);
      else if (part.type === 'image_url' && part.image_url.detail === 'low') { n += 85; worse('cookbook+vision'); }
      else throw new Error('no rule for content part ' + part.type);
    }
    return n;
  }
  function messages(msgs) {
    let n = 3;
    for (const m of msgs) {
      n += 3 + tok(m.role) + content(m.content);
      if (m.name) n += 1 + tok(m.name);
      if (m.tool_calls) {
        worse('approx');
        for (const tc of m.tool_calls) n += 3 + tok(tc.function.name) + tok(tc.function.arguments);
      }
      if (m.tool_call_id) { worse('approx'); n += tok(m.tool_call_id); }
    }
    return n;
  }
  function tools(list) {
    worse('approx');
    let n = 0;
    for (const t of list) {
      const f = t.function;
      n += 7;
      let desc = f.description || '';
      if (desc.endsWith('.')) desc = desc.slice(0, -1);
      n += tok(f.name + ':' + desc);
      const props = (f.parameters && f.parameters.properties) || {};
      const keys = Object.keys(props);
      if (keys.length) {
        n += 3;
        for (const k of keys) {
          n += 3;
          const p = props[k];
          if (p.enum) { n -= 3; for (const e of p.enum) n += 3 + tok(String(e)); }
          let pd = p.description || '';
          if (pd.endsWith('.')) pd = pd.slice(0, -1);
          n += tok(k + ':' + p.type + ':' + pd);
        }
      }
    }
    return n + 12;
  }
  return function count(item) {
    method = 'exact';
    const b = item.body;
    let n = 0;
    switch (item.operation) {
    case 'embeddings': {
      const inp = Array.isArray(b.input) ? b.input : [b.input];
      for (const x of inp) n += typeof x === 'string' ? tok(x) : (Array.isArray(x) ? x.length : 1);
      if (inp.length && typeof inp[0] === 'number') n = inp.length;
      break;
    }
    case 'completions': {
      const p = Array.isArray(b.prompt) ? b.prompt : [b.prompt];
      for (const x of p) n += tok(x);
      break;
    }
    case 'chat/completions':
      method = 'cookbook';
      n = messages(b.messages);
      if (b.tools) n += tools(b.tools);
      break;
    case 'responses': {
      worse('approx');
      const msgs = [];
      if (b.instructions) msgs.push({ role: 'system', content: b.instructions });
      if (typeof b.input === 'string') msgs.push({ role: 'user', content: b.input });
      else for (const it of b.input) msgs.push(it);
      n = messages(msgs);
      if (b.tools) n += tools(b.tools);
      break;
    }
    default:
      throw new Error('no rule for ' + item.operation);
    }
    return { n, method };
  };
}

const o200k = get_encoding('o200k_base');
const cl100k = get_encoding('cl100k_base');
const co = counter(o200k), cc = counter(cl100k);
for (const item of doc.items) {
  const a = co(item), b = cc(item);
  item.truth = { o200k: a.n, cl100k: b.n, method: a.method };
}
doc.truth_source = 'derive_counts.cjs with npm tiktoken 1.0.22 (o200k_base, cl100k_base)';
fs.writeFileSync(file, JSON.stringify(doc, null, 1) + '\n');
o200k.free(); cl100k.free();
console.log('updated', doc.items.length, 'items');
