// One error hierarchy for every failure the API reports, over REST or the WebSocket.
// Each error carries the API's error body (`body`: {status, error, code, message,
// request_id, errors, …}), its HTTP `status` (0 for a WebSocket frame or a failure
// before any answer), the `requestId` to quote to the operator and, for 429 and 503,
// the server's `retryAfterS`.

export class ChatStorageError extends Error {
  constructor(message, { status = 0, body = null, requestId = null, retryAfterS = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.body = body && typeof body === "object" ? body : {};
    this.requestId = requestId || (typeof this.body.request_id === "string" ? this.body.request_id : null);
    this.code = typeof this.body.code === "string" ? this.body.code : null;
    this.retryAfterS = retryAfterS ?? (typeof this.body.retry_after === "number" ? this.body.retry_after : null);
  }

  /** The field errors of the body ([{field, message}]), empty when none. */
  get errors() { return Array.isArray(this.body.errors) ? this.body.errors : []; }
}

/** 401: no credential, or an expired, altered or foreign token. */
export class Unauthorized extends ChatStorageError {}
/** 403: the credential is unknown, revoked or lacks the scope; another connection's stream. */
export class Forbidden extends ChatStorageError {}
/** 404: no such session or message (or another tenant's or user's). */
export class NotFound extends ChatStorageError {}
/** 409: a conflicting write, an ended stream, an idempotent request still in flight. */
export class Conflict extends ChatStorageError {}
/** 400, 413, 415 or 422: the request is wrong; `errors` names the fields. */
export class ValidationFailed extends ChatStorageError {}
/** 429 after every retry; `retryAfterS` says how long to wait. */
export class RateLimited extends ChatStorageError {}
/** 5xx (503 after every retry: nothing was stored), or an `internal` frame. */
export class ServerError extends ChatStorageError {}
/** The server could not be reached, or the connection dropped (after every retry). */
export class ConnectionFailed extends ChatStorageError {}
/** An answer could not be produced or resumed (it ended, or its grace period passed). */
export class StreamError extends ChatStorageError {}
/** The server speaks a contract version this client does not support, or lacks a route it needs. */
export class VersionMismatch extends ChatStorageError {}

/** The name the first browser client exported; every error of this client is one. */
export { ChatStorageError as ApiError };

const BY_CODE = {
  unauthorized: Unauthorized, forbidden: Forbidden, not_found: NotFound, conflict: Conflict,
  idempotency_in_flight: Conflict, validation_failed: ValidationFailed,
  unknown_parameter: ValidationFailed, payload_too_large: ValidationFailed,
  unsupported_media_type: ValidationFailed, idempotency_mismatch: ValidationFailed,
  rate_limited: RateLimited, unavailable: ServerError, internal: ServerError,
};
const BY_STATUS = {
  400: ValidationFailed, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: NotFound,
  409: Conflict, 413: ValidationFailed, 415: ValidationFailed, 422: ValidationFailed, 429: RateLimited,
};

/** The error for an error answer (`status` 0: a WebSocket `error` frame). */
export function fromBody(status, body, { requestId = null, retryAfterS = null } = {}) {
  const data = body && typeof body === "object" ? body : {};
  const kind = BY_CODE[data.code] || BY_STATUS[status] || (status >= 500 || status === 0 ? ServerError : ChatStorageError);
  const message = typeof data.message === "string" && data.message ? data.message : `HTTP ${status}`;
  return new kind(message, { status, body: data, requestId, retryAfterS });
}
