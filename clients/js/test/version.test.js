// A server of another contract version, or one lacking a route this client calls, is a
// clear VersionMismatch before any call; so is something that is not a server at all.
// The stand-ins serve the real server's /openapi.json, rewritten (tests/clients/js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { ChatStorage, VersionMismatch } from "../src/index.js";
import { env } from "./support.js";

const api = (path) => new ChatStorage({ baseUrl: `${env.control}${path}`, apiKey: env.apiKey, retry: { attempts: 1 } });

test("a server of version 2 is refused with a clear error", async () => {
  const v2 = api("/v2");
  const err = await v2.sessions.create({ user_id: "u" }).catch((e) => e);
  assert.ok(err instanceof VersionMismatch, String(err));
  assert.match(err.message, /the server speaks API version 2\.0; this client .* supports version 1\.x/);
  await assert.rejects(v2.streamAnswer("00000000-0000-7000-8000-000000000000"), VersionMismatch);
  await assert.rejects(v2.checkVersion(), VersionMismatch);
});

test("a server without a route this client needs is refused", async () => {
  const err = await api("/nosearch").messages.search("x").toArray().catch((e) => e);
  assert.ok(err instanceof VersionMismatch);
  assert.match(err.message, /lacks operations this client needs: GET \/api\/v1\/search/);
});

test("something that is not a chat-storage server is refused", async () => {
  const err = await api("/nothing").sessions.get("x").catch((e) => e);
  assert.ok(err instanceof VersionMismatch);
  assert.match(err.message, /is this a chat-storage server/);
});

test("the real server passes", async () => {
  const real = new ChatStorage({ baseUrl: env.base, apiKey: env.apiKey });
  assert.equal(await real.checkVersion(), real.serverVersion);
  assert.match(real.serverVersion, /^1(\.|$)/);
});
