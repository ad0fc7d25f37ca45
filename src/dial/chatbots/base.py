"""The systems under test: chatbots the simulator converses with (issue #3).

A backend answers many sessions at once (`reply` takes a batch), so a simulation round costs one
batched call per chatbot. Requests carry the conversation from the *chatbot's* point of view
(role `user` = the simulated user, `assistant` = the chatbot), without the chatbot's system prompt:
each backend adds its own.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from dial.errors import DialError


@dataclass(frozen=True)
class ChatRequest:
    session_id: str  # the simulated session
    real_session_id: str  # the real session whose context grounds it (replay uses its messages)
    seed: int  # per session and turn: the same params give the same replies
    messages: list[dict[str, str]]  # {"role": "user"|"assistant", "content": ...}, oldest first


@dataclass(frozen=True)
class ChatReply:
    text: str | None  # None: the chatbot ended the conversation
    metadata: dict = field(default_factory=dict)  # e.g. generated tokens, retries
    # Cut by the backend's token budget before the chatbot ended its message (hf: no end-of-turn
    # token within max_new_tokens; openai: finish_reason "length"). A cut is our artifact, not the
    # chatbot's behaviour: the simulated messages table records it and judges do not count it.
    truncated: bool = False
    # More messages of the same chatbot turn, after `text`: a burst, as real partners send them
    # (replay). The simulated user answers once, after all of them.
    follow_ups: tuple[str, ...] = ()

    @property
    def messages(self) -> list[str]:
        """The turn's messages in order (none when the chatbot ended the conversation)."""
        return [] if self.text is None else [self.text, *self.follow_ups]


class ChatbotError(DialError):
    """A chatbot failed for a session after its retries; names both."""

    def __init__(self, chatbot: str, session_id: str, reason: str) -> None:
        super().__init__(f"chatbot {chatbot!r} failed for session {session_id!r}: {reason}")
        self.chatbot = chatbot
        self.session_id = session_id
        self.reason = reason


class Chatbot(ABC):
    name: str

    @abstractmethod
    def reply(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        """One reply per request, in order. Raises ChatbotError when a request cannot be served."""

    def forget(self, session_ids: Sequence[str]) -> None:
        """Drop per-session state (e.g. cached prompt prefixes) of finished sessions."""

    def close(self) -> None:
        """Release resources (threads, models)."""


def chatbot_seed(chatbot_name: str, request_seed: int) -> int:
    """Different chatbots get different random streams for the same session turn."""
    digest = hashlib.sha256(f"{chatbot_name}:{request_seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
