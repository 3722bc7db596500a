// Retries: a POST whose answer was lost is sent again with the same Idempotency-Key and
// stored once; 429 waits for Retry-After; an unreachable server is a ConnectionFailed.
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";

import { ChatStorage, ConnectionFailed, RateLimited } from "../src/index.js";
import { client, control, env, unique } from "./support.js";

test("a POST whose answer was lost is retried and stored once", async () => {
  const api = client({ via: "proxy", retry: { attempts: 4 } });
  const sid = (await api.sessions.create({ user_id: unique("idem") })).id;
  const content = unique("only-once");
  const dropped = (await control("stats")).replies_dropped;
  // the server commits the message; its 201 is swallowed and the connection cut
  await control("drop", { marker: content });
  const message = await api.messages.create(sid, { role: "user", content });
  assert.equal((await control("stats")).replies_dropped, dropped + 1);
  const stored = await client().messages.list(sid).toArray();
  assert.deepEqual(stored.map((m) => [m.id, m.content]), [[message.id, content]]);

  // a session too: a lost 201 does not make two
  const user = unique("idem-user");
  await control("drop", { marker: user });
  const made = await api.sessions.create({ user_id: user });
  assert.equal((await control("stats")).replies_dropped, dropped + 2);
  assert.deepEqual((await client().sessions.list({ user_id: user }).toArray()).map((s) => s.id), [made.id]);
});

test("429 is retried after Retry-After", async () => {
  const api = new ChatStorage({ baseUrl: env.slow, apiKey: env.apiKey, retry: { attempts: 6, baseMs: 20, maxWaitMs: 5000 } });
  const sid = (await api.sessions.create({ user_id: unique("slow") })).id;
  const started = performance.now();
  for (let i = 0; i < 3; i++) await api.messages.create(sid, { role: "user", content: `m${i}` });
  // a token a second: each create waited for Retry-After, and none was stored twice
  assert.ok(performance.now() - started >= 2000, "the retries did not wait");
  assert.deepEqual((await api.messages.list(sid).toArray()).map((m) => m.content), ["m0", "m1", "m2"]);

  const impatient = new ChatStorage({ baseUrl: env.slow, apiKey: env.apiKey, retry: { attempts: 1 } });
  const refused = await (async () => {
    for (let i = 0; i < 4; i++) await impatient.sessions.get(sid);
  })().catch((e) => e);
  assert.ok(refused instanceof RateLimited, String(refused));
  assert.equal(refused.status, 429);
  assert.equal(refused.code, "rate_limited");
  assert.ok(refused.retryAfterS > 0);
  assert.match(refused.requestId, /\S{8,}/);
});

test("an unreachable server is a ConnectionFailed after the attempts", async () => {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const api = new ChatStorage({ baseUrl: `http://127.0.0.1:${port}`, apiKey: env.apiKey, retry: { attempts: 3, baseMs: 5 } });
  await assert.rejects(api.sessions.create({ user_id: "u" }), ConnectionFailed);
});
