// What the Node tests share: the real servers pytest started (tests/clients/js), named
// by environment variables, and a way to cut the proxy's connections. Imported by the
// *.test.js files; it runs nothing by itself.
import { ChatStorage } from "../src/index.js";

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/clients/js/test_node.py`);
  return value;
}

export const env = {
  get base() { return need("CS_BASE_URL"); },          // the server, directly
  get proxy() { return need("CS_PROXY_URL"); },        // the same server behind a CutProxy
  get control() { return need("CS_CONTROL_URL"); },    // the test's control of that proxy
  get slow() { return need("CS_SLOW_URL"); },          // a server allowing 1 request a second
  get apiKey() { return need("CS_API_KEY"); },
};

export const unique = (prefix) => `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A client of the tenant's key, straight to the server or through the proxy. */
export function client({ via = "base", retry, ...rest } = {}) {
  return new ChatStorage({ baseUrl: env[via], apiKey: env.apiKey, retry: { baseMs: 20, ...retry }, ...rest });
}

/** Ask the pytest process to act on the proxy: "cut" (every connection now) or
 *  "drop" (swallow the answer to the next request containing `marker`). */
export async function control(action, params = {}) {
  const r = await fetch(`${env.control}/${action}?${new URLSearchParams(params)}`, { method: "POST" });
  if (!r.ok) throw new Error(`control ${action}: ${r.status} ${await r.text()}`);
  return r.json();
}

/** Wait until `check()` is true, polling, for at most `timeoutMs`. */
export async function until(check, timeoutMs = 15_000, what = "a condition") {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Text of several code point widths: ASCII, Latin, emoji (astral), CJK. */
export function words(rng, n) {
  const alphabet = ["a", "b", "c", " ", ",", "é", "€", "😀", "中", "文", "👩‍💻", "🚀", "ß"];
  const out = [];
  for (let i = 0; i < n; i++) {
    let w = "";
    const len = 1 + Math.floor(rng() * 10);
    for (let j = 0; j < len; j++) w += alphabet[Math.floor(rng() * alphabet.length)];
    out.push(w);
  }
  return out;
}

/** A small seeded generator (mulberry32), so a failing run can be repeated. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
