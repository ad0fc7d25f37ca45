"""`hf` backend: a local transformers chat model with a system prompt and decoding params."""

from __future__ import annotations

from typing import Sequence

from dial.chatbots.base import Chatbot, ChatReply, ChatRequest, chatbot_seed
from dial.simulation.generation import ChatGenerator
from dial.params import ChatbotParams


class HFChatbot(Chatbot):
    """Replies with a local model. Several chatbots may share one loaded `ChatGenerator`
    (e.g. the same base model with different prompts and temperatures)."""

    def __init__(self, params: ChatbotParams, generator: ChatGenerator) -> None:
        self.name = params.name
        self.params = params
        self.generator = generator

    def conversation(self, request: ChatRequest) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.params.system_prompt}] if self.params.system_prompt else []
        return system + list(request.messages)

    def reply(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        return reply_together([(self, requests)])[0]

    def forget(self, session_ids: Sequence[str]) -> None:
        self.generator.forget([self._cache_key(session_id) for session_id in session_ids])

    def _cache_key(self, session_id: str) -> str:
        return f"chatbot:{self.name}:{session_id}"



def reply_together(calls: Sequence[tuple[HFChatbot, Sequence[ChatRequest]]]) -> list[list[ChatReply]]:
    """Each (chatbot, requests) call's replies; chatbots sharing one generator answer in one
    batched generation, each row with its chatbot's prompt, decoding and seed."""
    rows = [(chatbot, request) for chatbot, requests in calls for request in requests]
    by_generator: dict[int, list[int]] = {}
    for index, (chatbot, _) in enumerate(rows):
        by_generator.setdefault(id(chatbot.generator), []).append(index)
    generated = [None] * len(rows)
    for indices in by_generator.values():
        generator = rows[indices[0]][0].generator
        outputs = generator.generate(
            [rows[i][0].conversation(rows[i][1]) for i in indices],
            [rows[i][0].params.decoding for i in indices],
            [chatbot_seed(rows[i][0].name, rows[i][1].seed) for i in indices],
            cache_keys=[rows[i][0]._cache_key(rows[i][1].session_id) for i in indices],
        )
        for i, output in zip(indices, outputs):
            generated[i] = output
    # An empty generation cannot be a message: the chatbot said nothing, which ends the session.
    replies = [
        ChatReply(text=g.text or None, metadata={"n_tokens": g.n_tokens, "empty": not g.text}, truncated=g.hit_max_tokens)
        for g in generated
    ]
    result, start = [], 0
    for _, requests in calls:
        result.append(replies[start : start + len(requests)])
        start += len(requests)
    return result
