// HTTP to the API: the base URL, one credential, an Idempotency-Key on every POST,
// bounded retries, and the version check before the first call.
//
// Retried: 429 and 503 (the server stored nothing), 409 `idempotency_in_flight` (the
// first attempt of this very call still runs) and connection errors or timeouts. A
// POST is safe to send again because every attempt of one call carries the same
// Idempotency-Key: the server replays its first answer instead of storing twice. The
// wait is the server's Retry-After when it gives one (capped by `maxWaitMs`), else
// exponential back-off with full jitter; at most `attempts` tries in all.

import { ChatStorageError, ConnectionFailed, fromBody } from "./errors.js";
import { checkDocument, notAServer } from "./version.js";

export const DEFAULT_RETRY = Object.freeze({ attempts: 5, baseMs: 200, maxWaitMs: 10_000 });
const RETRY_STATUSES = new Set([429, 503]);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Full jitter: uniform in [0, base·2^attempt], capped. */
export function backoffMs(retry, attempt) {
  return Math.random() * Math.min(retry.maxWaitMs, retry.baseMs * 2 ** attempt);
}

/** An absolute base URL without a trailing slash: `baseUrl`, resolved against the
 *  page's address in a browser. Outside a browser it must be absolute. */
export function resolveBase(baseUrl) {
  const here = globalThis.location && globalThis.location.href;
  let url;
  try {
    url = new URL(baseUrl || here, here);
  } catch {
    throw new TypeError(`baseUrl must be an absolute http(s) URL outside a browser (got ${JSON.stringify(baseUrl || "")})`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError(`baseUrl must be http(s): ${url}`);
  return (url.origin + url.pathname).replace(/\/+$/, "");
}

/** A random UUIDv4 (crypto.randomUUID needs a secure context in browsers). */
export function newKey() {
  if (globalThis.crypto && typeof globalThis.crypto.randomUUID === "function") {
    try { return globalThis.crypto.randomUUID(); } catch { /* not a secure context */ }
  }
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Query string of `params`, without the unset ones. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

function retryAfterS(headers) {
  const value = headers.get("Retry-After");
  const n = value === null ? NaN : Number(value);
  return Number.isFinite(n) ? Math.max(0, n) : null;
}

async function errorOf(r) {
  const text = await r.text().catch(() => "");
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch { body = {}; }
  return fromBody(r.status, body, { requestId: r.headers.get("X-Request-ID"), retryAfterS: retryAfterS(r.headers) });
}

export class Transport {
  constructor({ baseUrl, apiKey, token, retry, timeoutMs = 30_000, checkVersion = true, fetch: fetchImpl } = {}) {
    if (apiKey && token) throw new TypeError("give apiKey or token, not both");
    this.baseUrl = resolveBase(baseUrl);
    this.apiKey = apiKey || null;
    this.token = token || null;
    this.retry = { ...DEFAULT_RETRY, ...(retry || {}) };
    this.timeoutMs = timeoutMs;
    this.checkVersion = checkVersion;
    this.serverVersion = null;
    this._checking = null;
    this._fetch = fetchImpl || ((...args) => globalThis.fetch(...args));
  }

  /** The headers of the credential held now. */
  credentials() {
    if (this.token) return { Authorization: `Bearer ${this.token}` };
    if (this.apiKey) return { "X-Api-Key": this.apiKey };
    return {};
  }

  /** Fetch /openapi.json once and check it (VersionMismatch if unsupported). */
  ensureVersion() {
    if (!this.checkVersion || this.serverVersion !== null) return Promise.resolve(this.serverVersion);
    if (!this._checking) {
      this._checking = this.send("GET", "/openapi.json", { auth: false }).then(
        (answer) => { this.serverVersion = checkDocument(answer.body); return this.serverVersion; },
        (err) => { throw err instanceof ChatStorageError && (err.status === 404 || err.status === 405) ? notAServer(err.status) : err; },
      ).finally(() => { this._checking = null; });
    }
    return this._checking;
  }

  /** Check the version, then send: resolves to the decoded JSON body (null if empty). */
  async request(method, path, { body, params, raw = false } = {}) {
    await this.ensureVersion();
    const answer = await this.send(method, path + query(params), { body, raw });
    return raw ? answer.text : answer.body;
  }

  /** Send with retries: {status, headers, body, text}; an error answer rejects. */
  async send(method, path, { body, raw = false, auth = true, headers: extra } = {}) {
    const headers = { ...(auth ? this.credentials() : {}), ...(extra || {}) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method === "POST") headers["Idempotency-Key"] = newKey();
    const data = body === undefined ? undefined : JSON.stringify(body);
    const url = this.baseUrl + path;
    let last = null;
    for (let attempt = 0; attempt < this.retry.attempts; attempt++) {
      if (attempt) await sleep(this._waitMs(attempt, last));
      let r;
      let text;
      try {
        r = await this._fetch(url, { method, headers, body: data, signal: AbortSignal.timeout(this.timeoutMs) });
        if (r.status < 400) text = await r.text();
      } catch (err) {
        last = new ConnectionFailed(`${method} ${path}: ${err && err.message}`, { cause: err });
        continue;
      }
      if (text !== undefined) return { status: r.status, headers: r.headers, text, body: raw || !text ? null : JSON.parse(text) };
      last = await errorOf(r);
      if (!RETRY_STATUSES.has(r.status) && last.code !== "idempotency_in_flight") throw last;
    }
    throw last || new ConnectionFailed("no attempt was made (retry.attempts < 1)");
  }

  _waitMs(attempt, last) {
    if (last && last.retryAfterS !== null) return Math.min(last.retryAfterS * 1000, this.retry.maxWaitMs) + Math.random() * this.retry.baseMs;
    return backoffMs(this.retry, attempt);
  }
}
