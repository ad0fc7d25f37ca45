"""`replay` backend: the real session's own partner turns, in order.

A partner turn is the run of consecutive assistant messages between two user messages (a burst is
one turn, as the real user saw it). The k-th reply of a simulated session is the k-th partner turn
of the real session that grounds it, all its messages; when the real partner has nothing more to
say, the chatbot ends the conversation. One real message per reply would spread a burst over
several simulated turns: the simulated user would then answer where the real one never did, a
structure no simulator controls. Replayed messages are real, never cut by a token budget
(`truncated` stays False).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from dial.chatbots.base import Chatbot, ChatbotError, ChatReply, ChatRequest


def partner_turns(messages: pd.DataFrame) -> dict[str, list[list[str]]]:
    """Each real session's assistant turns: runs of consecutive assistant messages, in order."""
    turns: dict[str, list[list[str]]] = {}
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    for session_id, group in ordered.groupby("session_id", sort=False):
        session_turns: list[list[str]] = []
        previous_role = None
        for role, text in zip(group["role"], group["text"]):
            if role == "assistant":
                if previous_role == "assistant":
                    session_turns[-1].append(text)
                else:
                    session_turns.append([text])
            previous_role = role
        turns[str(session_id)] = session_turns
    return turns


def count_turns(messages: Sequence[dict[str, str]], role: str) -> int:
    """Runs of consecutive messages of `role` in a conversation."""
    return sum(1 for i, message in enumerate(messages) if message["role"] == role and (i == 0 or messages[i - 1]["role"] != role))


class ReplayChatbot(Chatbot):
    def __init__(self, name: str, real_partner_turns: Mapping[str, list[list[str]]]) -> None:
        self.name = name
        self.real_partner_turns = real_partner_turns  # real session id -> its assistant turns (`partner_turns`)

    def reply(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        replies = []
        for request in requests:
            if request.real_session_id not in self.real_partner_turns:
                raise ChatbotError(self.name, request.session_id, f"real session {request.real_session_id!r} is unknown")
            real = self.real_partner_turns[request.real_session_id]
            already = count_turns(request.messages, "assistant")
            if already >= len(real):
                replies.append(ChatReply(text=None, metadata={"replayed": already}))
                continue
            first, *rest = real[already]
            replies.append(ChatReply(text=first, follow_ups=tuple(rest), metadata={"replayed": already}))
        return replies
