"""`replay` backend: the real session's own assistant messages, in order.

The k-th reply of a simulated session is the k-th assistant message of the real session that
grounds it; when the real assistant has nothing more to say, the chatbot ends the conversation.
Replayed messages are real, never cut by a token budget (`truncated` stays False).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from dial.chatbots.base import Chatbot, ChatbotError, ChatReply, ChatRequest


class ReplayChatbot(Chatbot):
    def __init__(self, name: str, assistant_messages: Mapping[str, list[str]]) -> None:
        self.name = name
        self.assistant_messages = assistant_messages  # real session id -> its assistant texts

    def reply(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        replies = []
        for request in requests:
            if request.real_session_id not in self.assistant_messages:
                raise ChatbotError(self.name, request.session_id, f"real session {request.real_session_id!r} is unknown")
            real = self.assistant_messages[request.real_session_id]
            already = sum(1 for message in request.messages if message["role"] == "assistant")
            replies.append(ChatReply(text=real[already] if already < len(real) else None, metadata={"replayed": already}))
        return replies
