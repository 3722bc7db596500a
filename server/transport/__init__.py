"""The streaming transports (WebSocket, SSE): wire framing and the batching writer."""
