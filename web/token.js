// token.js — the demo page's credential: a user token, kept in sessionStorage (this tab
// only, gone when it closes) and renewed before it expires. Never the tenant API key.
//
// Where a token comes from:
// - POST /dev/tokens, when the server offers it (the embedded database, or
//   CHAT_DEV_TOKENS=1) to pages on its own machine: renewed by itself;
// - otherwise the user pastes a tenant key once; it is traded for a token
//   (ChatStorage.exchangeKey) and kept nowhere, so when the token is about to
//   expire the page asks for the key again ("expiring" event).
// A real application gets its tokens from its own backend (docs/auth.md).
import { ChatStorage, fromBody } from "/web/client/index.js"; // the chat-storage-client package (clients/js)

const SLOT = "chat-storage.token";
const store = window.sessionStorage;
const DEFAULT_MARGIN_S = 60;

/** The claims of one of our JWTs, unverified (the server verifies; the page only
 *  reads when to renew), or null. */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

export class TokenKeeper extends EventTarget {
  /** `ttlS`: the lifetime to ask for (60..86400; the server's default if unset);
   *  `marginS`: renew this long before expiry, at most a fifth of the lifetime. */
  constructor({ baseUrl = "", ttlS, marginS = DEFAULT_MARGIN_S } = {}) {
    super();
    this.baseUrl = baseUrl;
    this.ttlS = ttlS;
    this.marginS = marginS;
    this.kept = null; // {token, user_id, expires_at, source: "dev"|"key", renew_at}
    this._timer = null;
  }

  /** This tab's token from before a reload, if it is not due for renewal yet. */
  resume() {
    let kept = null;
    try { kept = JSON.parse(store.getItem(SLOT) || "null"); } catch { kept = null; }
    if (!kept || !kept.token || !(kept.renew_at > Date.now())) return null;
    this.kept = kept;
    this._schedule();
    return kept;
  }

  /** A dev token for `userId`, or null when this server mints none for this page. */
  async fromDev(userId) {
    const body = { user_id: userId };
    if (this.ttlS) body.ttl_s = this.ttlS;
    const r = await fetch(this.baseUrl + "/dev/tokens", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    if (r.status === 404 || r.status === 403) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) throw fromBody(r.status, data, { requestId: r.headers.get("X-Request-ID") });
    return this._keep(data, "dev");
  }

  /** Trade a tenant key for a token of `userId`; the key goes no further than the request. */
  async fromKey(apiKey, userId) {
    const minted = await ChatStorage.exchangeKey({ baseUrl: this.baseUrl, apiKey, userId, ttlS: this.ttlS });
    return this._keep(minted, "key");
  }

  /** Renew now: a dev token is minted again, a key's token makes the page ask for it. */
  async renew() {
    clearTimeout(this._timer);
    const kept = this.kept;
    if (kept && kept.source === "dev") {
      try {
        if (await this.fromDev(kept.user_id)) return;
      } catch (err) {
        this._emit("error", { error: err });
      }
    }
    this._emit("expiring", { user_id: kept && kept.user_id });
  }

  forget() {
    clearTimeout(this._timer);
    this.kept = null;
    store.removeItem(SLOT);
  }

  _keep(minted, source) {
    const claims = claimsOf(minted.token);
    // the lifetime from the token's own iat and exp: this browser's clock may be off
    const lifetimeMs = claims && claims.exp > claims.iat
      ? (claims.exp - claims.iat) * 1000
      : Date.parse(minted.expires_at) - Date.now();
    const marginMs = Math.min(this.marginS * 1000, lifetimeMs / 5);
    const renewed = this.kept !== null && this.kept.user_id === minted.user_id;
    this.kept = { token: minted.token, user_id: minted.user_id, expires_at: minted.expires_at, source, renew_at: Date.now() + lifetimeMs - marginMs };
    store.setItem(SLOT, JSON.stringify(this.kept));
    this._schedule();
    this._emit("token", { kept: this.kept, renewed });
    return this.kept;
  }

  _schedule() {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this.renew(), Math.max(0, this.kept.renew_at - Date.now()));
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}
