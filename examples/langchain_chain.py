"""A LangChain chain whose conversation is kept in chat-storage.

    CHAT_STORAGE_URL=http://127.0.0.1:8080 CHAT_STORAGE_API_KEY=cs_... \\
        python examples/langchain_chain.py "I am Ann." "Who am I?"

``prompt | model`` wrapped in ``RunnableWithMessageHistory`` with
``ChatStorageMessageHistory``: each question and answer is stored in one chat-storage
session, and each call's prompt holds the history read back from it. The model is
langchain_core's fake chat model (canned answers, no network); put yours in its place.
Needs ``pip install './clients/python[langchain]'``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from chat_storage_client import Client
from chat_storage_client.langchain import ChatStorageMessageHistory
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory


def build_chain(client: Client, model: BaseChatModel) -> RunnableWithMessageHistory:
    """The chain, its history in the chat-storage session named by ``session_id``."""
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You answer briefly."),
        MessagesPlaceholder("history"),
        ("human", "{question}"),
    ])

    def show(value: PromptValue) -> PromptValue:
        print(f"  (the model is shown {len(value.to_messages())} messages)")
        return value

    return RunnableWithMessageHistory(
        prompt | RunnableLambda(show) | model,
        lambda session_id: ChatStorageMessageHistory(session_id, client=client),
        input_messages_key="question", history_messages_key="history")


def main(questions: list[str]) -> None:
    url, key = os.environ["CHAT_STORAGE_URL"], os.environ["CHAT_STORAGE_API_KEY"]
    model = FakeListChatModel(responses=["Nice to meet you, Ann.", "You are Ann."])
    with Client(url, api_key=key) as client:
        session_id = client.sessions.create("example-user", title="LangChain example")["id"]
        print(f"session {session_id}")
        chain = build_chain(client, model)
        config: Any = {"configurable": {"session_id": session_id}}
        for question in questions:
            print(f"> {question}")
            print(f"< {chain.invoke({'question': question}, config=config).content}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["I am Ann.", "Who am I?"])
