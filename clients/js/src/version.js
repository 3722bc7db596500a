// Which servers this client can talk to: the contract's major version and its routes.
// Checked once per client, before its first call, from the server's /openapi.json
// (no credential needed): `info.version` must be of the major version this client
// supports, and every route it calls must be in the document. Either failing is a
// VersionMismatch that names what is missing, instead of a confusing 404 later.

import { VersionMismatch } from "./errors.js";

export const CLIENT_VERSION = "0.1.0";
export const SUPPORTED_MAJOR = "1";
// [method, path] of every route this client calls
export const REQUIRED = [
  ["post", "/api/v1/sessions"],
  ["get", "/api/v1/sessions"],
  ["get", "/api/v1/sessions/{session_id}"],
  ["patch", "/api/v1/sessions/{session_id}"],
  ["delete", "/api/v1/sessions/{session_id}"],
  ["get", "/api/v1/sessions/{session_id}/export"],
  ["post", "/api/v1/sessions/{session_id}/messages"],
  ["post", "/api/v1/sessions/{session_id}/messages/batch"],
  ["get", "/api/v1/sessions/{session_id}/messages"],
  ["get", "/api/v1/sessions/{session_id}/messages/{message_id}"],
  ["patch", "/api/v1/sessions/{session_id}/messages/{message_id}"],
  ["delete", "/api/v1/sessions/{session_id}/messages/{message_id}"],
  ["get", "/api/v1/search"],
  ["post", "/api/v1/sessions/{session_id}/ws-tickets"],
  ["get", "/api/v1/sessions/{session_id}/ws"],
];

/** The server's contract version if this client supports it; else VersionMismatch. */
export function checkDocument(document) {
  if (!document || typeof document !== "object" || Array.isArray(document)) {
    throw new VersionMismatch("the server's /openapi.json is not an OpenAPI document");
  }
  const version = String((document.info && document.info.version) || "");
  if (version.split(".")[0] !== SUPPORTED_MAJOR) {
    throw new VersionMismatch(
      `the server speaks API version ${version || "(none)"}; this client (chat-storage-client ` +
      `${CLIENT_VERSION} for JavaScript) supports version ${SUPPORTED_MAJOR}.x: upgrade the ` +
      "client or use a server of that version");
  }
  const paths = document.paths || {};
  const missing = REQUIRED.filter(([m, p]) => !(paths[p] && paths[p][m])).map(([m, p]) => `${m.toUpperCase()} ${p}`);
  if (missing.length) {
    throw new VersionMismatch(`the server (API version ${version}) lacks operations this client needs: ${missing.join(", ")}; upgrade the server`);
  }
  return version;
}

/** The error for an /openapi.json that did not answer as a chat-storage server. */
export function notAServer(status) {
  return new VersionMismatch(`GET /openapi.json answered ${status}: is this a chat-storage server (version ${SUPPORTED_MAJOR})?`, { status });
}
