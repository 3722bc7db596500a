"""chat-storage: durable, live-streaming conversation storage for RAG chat applications."""
