"""The simulator's prompt format ("flip the dialogue", METHOD.md §3). Reused by SFT, simulation,
alternatives sampling and DPO, so there is exactly one definition.

The simulator is the chat model's *assistant*: it writes the real user's messages. So a session is
rendered as chat messages from the simulator's point of view:

    system     the user context (dial.contexts.render_context)
    assistant  what the real user said          (role "user" in our data)
    user       what the chatbot answered        (role "assistant" in our data)

Consecutive messages of the same role stay separate (real users send bursts). The next user
message is generated as a new assistant turn; the end marker alone as that turn means the user
ends the conversation.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_END_MARKER = "<|endconversation|>"

FLIPPED_ROLE = {"user": "assistant", "assistant": "user"}


def simulator_messages(context_text: str, history: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat messages for the simulator: the context as system, then the flipped session history."""
    messages = [{"role": "system", "content": context_text}]
    messages.extend({"role": FLIPPED_ROLE[role], "content": text} for role, text in history)
    return messages


def is_end_of_conversation(generated: str, end_marker: str = DEFAULT_END_MARKER) -> bool:
    return generated.strip().startswith(end_marker)
