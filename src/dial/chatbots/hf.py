"""`hf` backend: a local transformers chat model with a system prompt and decoding params."""

from __future__ import annotations

from typing import Sequence

from dial.chatbots.base import Chatbot, ChatReply, ChatRequest, chatbot_seed
from dial.generation import ChatGenerator
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
        generated = self.generator.generate(
            [self.conversation(request) for request in requests],
            self.params.decoding,
            [chatbot_seed(self.name, request.seed) for request in requests],
            cache_keys=[self._cache_key(request.session_id) for request in requests],
        )
        # An empty generation cannot be a message: the chatbot said nothing, which ends the session.
        return [
            ChatReply(
                text=g.text or None,
                metadata={"n_tokens": g.n_tokens, "empty": not g.text},
                truncated=g.hit_max_tokens,
            )
            for g in generated
        ]

    def forget(self, session_ids: Sequence[str]) -> None:
        self.generator.forget([self._cache_key(session_id) for session_id in session_ids])

    def _cache_key(self, session_id: str) -> str:
        return f"chatbot:{self.name}:{session_id}"

