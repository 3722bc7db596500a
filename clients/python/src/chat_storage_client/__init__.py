"""chat-storage-client: the chat-storage API from Python (asyncio and sync).

    async with AsyncClient("http://127.0.0.1:8000", api_key=KEY) as client:
        session = await client.sessions.create("user-1", title="Hello")
        async with client.stream_answer(session["id"]) as answer:
            await answer.write("Hi there")
"""

from chat_storage_client.client import AsyncClient
from chat_storage_client.errors import (
    ChatStorageError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    StreamError,
    Unauthorized,
    ValidationFailed,
    VersionMismatch,
)
from chat_storage_client.models import (
    ContextItem,
    Event,
    Feedback,
    LinkedAttachment,
    Message,
    MessageUsage,
    SearchHit,
    Session,
    SessionUsage,
    ToolCall,
)
from chat_storage_client.streaming import AnswerStream
from chat_storage_client.sync import Client
from chat_storage_client.transport import RetryPolicy

__version__ = "0.1.0"
__all__ = [
    "AnswerStream", "AsyncClient", "ChatStorageError", "Client", "Conflict",
    "ConnectionFailed", "ContextItem", "Event", "Feedback", "Forbidden", "LinkedAttachment",
    "Message", "MessageUsage", "NotFound", "RateLimited", "RetryPolicy", "SearchHit",
    "ServerError", "Session", "SessionUsage", "StreamError", "ToolCall", "Unauthorized",
    "ValidationFailed", "VersionMismatch", "__version__",
]
