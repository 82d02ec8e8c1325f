// Test-only: the official openai SDK's AzureOpenAI client, streaming and not, through aoai-guard.
// Usage: AG_ENDPOINT=http://127.0.0.1:PORT node stream_chat.mjs
import assert from "node:assert/strict";
import { AzureOpenAI } from "openai";

const client = new AzureOpenAI({
  endpoint: process.env.AG_ENDPOINT,
  apiKey: "caller-key-the-gateway-drops",
  apiVersion: "2024-10-21",
  deployment: "gpt-4o-mini",
  maxRetries: 0,
});

const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "stream through the gateway" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks++;
  const delta = chunk.choices?.[0]?.delta?.content;
  if (delta) text += delta;
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text, "Echo: stream through the gateway");
assert.ok(usage && usage.total_tokens > 0, "usage chunk received");
assert.ok(chunks > 3, "several chunks");

const resp = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "not streamed" }],
});
assert.equal(resp.choices[0].message.content, "Echo: not streamed");

// A gateway error surfaces as the SDK's typed error with Azure's code.
try {
  await new AzureOpenAI({ endpoint: process.env.AG_ENDPOINT, apiKey: "k", apiVersion: "2024-10-21",
                          deployment: "../etc", maxRetries: 0 })
    .chat.completions.create({ model: "x", messages: [{ role: "user", content: "x" }] });
  assert.fail("expected an error");
} catch (e) {
  assert.ok(e.status === 400 || e.status === 404, `status ${e.status}`);
}
console.log(JSON.stringify({ ok: true, chunks, usage }));
