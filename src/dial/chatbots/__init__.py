"""Chatbot backends (the systems under test): `hf`, `openai`, `replay`. See base.py."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from dial.chatbots.base import Chatbot, ChatbotError, ChatReply, ChatRequest
from dial.params import ChatbotParams

__all__ = ["Chatbot", "ChatbotError", "ChatReply", "ChatRequest", "make_chatbots", "reply_all"]


def make_chatbots(
    chatbots: Sequence[ChatbotParams],
    base_model_dir: Path,
    real_partner_turns: Mapping[str, list[list[str]]],
    precision: str = "auto",
    batch_size: int = 32,
) -> list[Chatbot]:
    """Build every configured chatbot; `hf` chatbots on the same model share one loaded copy.
    `real_partner_turns` (`replay.partner_turns` of the real messages) is what `replay` answers with."""
    from dial.chatbots.hf import HFChatbot
    from dial.chatbots.replay import ReplayChatbot
    from dial.simulation.generation import ChatGenerator

    generators: dict[Path, ChatGenerator] = {}
    built: list[Chatbot] = []
    for params in chatbots:
        if params.backend == "hf":
            model_dir = Path(params.model_path) if params.model_path else base_model_dir
            if model_dir not in generators:
                generators[model_dir] = ChatGenerator.load(model_dir, precision=precision, batch_size=batch_size)
            built.append(HFChatbot(params, generators[model_dir]))
        elif params.backend == "openai":
            from dial.chatbots.openai import OpenAIChatbot

            built.append(OpenAIChatbot(params))
        else:
            built.append(ReplayChatbot(params.name, real_partner_turns))
    return built


def reply_all(calls: Sequence[tuple[Chatbot, Sequence[ChatRequest]]]) -> list[list[ChatReply]]:
    """Each (chatbot, requests) call's replies, in order. `hf` chatbots on one loaded model answer
    together in one batched generation (a simulation round then costs one call for all of them);
    other backends are called one by one."""
    from dial.chatbots.hf import HFChatbot, reply_together

    replies: list[list[ChatReply] | None] = [None] * len(calls)
    local = [index for index, (chatbot, _) in enumerate(calls) if isinstance(chatbot, HFChatbot)]
    for index, answered in zip(local, reply_together([calls[index] for index in local])):
        replies[index] = answered
    for index, (chatbot, requests) in enumerate(calls):
        if replies[index] is None:
            replies[index] = chatbot.reply(requests)
    return replies  # type: ignore[return-value]
