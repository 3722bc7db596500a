// chat-storage.js — the address pages have imported the JavaScript client from since
// the first demo. The client is the package in clients/js (chat-storage-client on
// npm, served by the server at /web/client/); this module re-exports it, so
//
//   import { ChatStorage } from "https://chat.example.com/web/chat-storage.js";
//
// keeps working and gets the same code as `import … from "chat-storage-client"`.
// See clients/js/README.md, docs/streaming.md and docs/auth.md.
export * from "./client/index.js";
