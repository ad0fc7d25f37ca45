"""The simulator's prompt format ("flip the dialogue", METHOD.md §3). Reused by SFT, simulation,
alternatives sampling and DPO, so there is exactly one definition.

The simulator is the chat model's *assistant*: it writes the real user's messages. So a session is
rendered as chat messages from the simulator's point of view:

    system     the user context (dial.contexts.render_context)
    assistant  what the real user said          (role "user" in our data)
    user       what the chatbot answered        (role "assistant" in our data)

A user turn in the history is one assistant message, its messages joined by the separator (as
below); the chatbot's consecutive messages stay separate.

A user *turn* is what the user writes before the chatbot answers: one or more messages (a burst),
generated as ONE assistant turn, its messages joined by the message separator
(`sft_samples.message_separator`, default `DEFAULT_MESSAGE_SEPARATOR`), and ending the
conversation is one more thing a turn can do: the end marker as its last piece (`join_user_turn`).
The separator is a marker in the style of the end marker, not whitespace: real messages contain
line breaks (and a model writes them inside one message), but no user types "<|msg|>"; a real
message that does contain it is quarantined by the SFT sample builder, never split.

A turn cut at the token cap is trimmed to its last complete sentence (`trim_cut_turn`) where the
simulation keeps or samples it (simulate, `dial chat`, pairs' alternatives), so a cut message is
rare and counted, not the norm.

`parse_user_turn` is the one rule every stage applies to a generated user turn (simulation,
`dial chat`, pairs' alternatives, the termination probe). The end marker *anywhere* in the turn
ends the conversation; the text before the first marker is split on the separator into the
turn's messages (blank pieces dropped); anything after the marker is dropped. "Anywhere", not
"only at the start": a model that writes "ok bye <marker>" has ended the conversation, and a
probe that only counted a leading marker would call that a continuation while the simulation
stops there.

A marker counts as written when it is malformed the way a small model writes it: its name with a
`|` beside it and any of `<`, `/`, `>` around ("</|msg|", "|msg|>", ">|endconversation|>"), and a
marker cut at the token cap at a message's end ("guitar<|") is dropped, as is a piece made only of
marker characters. The default SFT simulator wrote such debris into 7 % of its messages (9 % after
two DIAL iterations): text no real user writes, which a discriminator spots and DPO cannot fix
through the pairs' rewards alone. A real message that contains a marker in any of these forms is
quarantined by the SFT sample builder (`contains_marker`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

DEFAULT_END_MARKER = "<|endconversation|>"
DEFAULT_MESSAGE_SEPARATOR = "<|msg|>"

FLIPPED_ROLE = {"user": "assistant", "assistant": "user"}


def render_instruction(template: str, end_marker: str, message_separator: str) -> str:
    """The simulator's instruction with its `{end_marker}` and `{message_separator}` placeholders
    filled (plain replacement: other braces in a user's instruction stay as written), so that a
    zero-shot simulator is told the exact strings the simulation parses."""
    return template.replace("{end_marker}", end_marker).replace("{message_separator}", message_separator)


def user_messages_in_turns(roles: Sequence[str], n_turns: int) -> int:
    """How many user messages the first `n_turns` user turns hold: a user turn is a run of
    consecutive user messages (a burst), as the simulator writes one turn at a time. Every cut
    that compares real and simulated sessions "after N user turns" counts turns with this."""
    n_messages, n_seen, previous = 0, 0, None
    for role in roles:
        if role == "user":
            if previous != "user":
                n_seen += 1
                if n_seen > n_turns:
                    break
            n_messages += 1
        previous = role
    return n_messages


def simulator_messages(
    context_text: str, history: Sequence[tuple[str, str]], message_separator: str = DEFAULT_MESSAGE_SEPARATOR
) -> list[dict[str, str]]:
    """Chat messages for the simulator: the context as system, then the flipped session history,
    each user turn (a run of consecutive user messages) as ONE assistant message, its messages
    joined by the separator: the exact form the simulator generates a turn in, so that what it
    reads in its history and what it learns to write (SFT targets, whole-session SFT, DPO) are one
    format. The chatbot's consecutive messages stay separate (the simulator never writes them)."""
    messages = [{"role": "system", "content": context_text}]
    for role, text in history:
        if role == "user" and messages[-1]["role"] == FLIPPED_ROLE["user"]:
            messages[-1] = {"role": FLIPPED_ROLE["user"], "content": messages[-1]["content"] + message_separator + text}
        else:
            messages.append({"role": FLIPPED_ROLE[role], "content": text})
    return messages


@dataclass(frozen=True)
class UserTurn:
    """A generated user turn as the conversation keeps it."""

    messages: tuple[str, ...]  # what stays as user messages (stripped, never empty strings)
    ends: bool  # the user ends the conversation after these messages


def join_user_turn(
    messages: Sequence[str],
    ends: bool,
    end_marker: str = DEFAULT_END_MARKER,
    separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> str:
    """The text of a user turn as the simulator writes it: its messages joined by the separator,
    the end marker as one more piece when the turn ends the conversation."""
    return separator.join([*messages, end_marker] if ends else messages)


_MARKER_CHARACTERS = "<>|/ "


@lru_cache(maxsize=16)
def _marker_pattern(marker: str) -> re.Pattern:
    """The marker as written, or malformed (module docstring): its name with a `|` beside it."""
    name = marker.strip(_MARKER_CHARACTERS)
    if not name or name == marker:  # a marker without delimiters: only its exact form
        return re.compile(re.escape(marker))
    name = re.escape(name)
    return re.compile(rf"{re.escape(marker)}|(?:<\s*/?\s*)?\|\s*{name}\s*\|?\s*>?|(?:<\s*/?\s*|(?<![A-Za-z])){name}\s*\|\s*>?")


# A marker's start cut at the token cap: "<|", "</", "<|ms" at the very end of a message.
_CUT_MARKER = re.compile(r"<\s*(?:/\s*\|?|\|)\s*([A-Za-z]*)$")


def contains_marker(text: str, end_marker: str = DEFAULT_END_MARKER, separator: str = DEFAULT_MESSAGE_SEPARATOR) -> bool:
    """Whether `parse_user_turn` would read a marker (as written or malformed) in `text`."""
    return any(_marker_pattern(marker).search(text) for marker in (end_marker, separator))


def parse_user_turn(
    generated: str, end_marker: str = DEFAULT_END_MARKER, separator: str = DEFAULT_MESSAGE_SEPARATOR
) -> UserTurn:
    """The one end-of-conversation rule (module docstring): the marker anywhere ends the
    conversation; the text before the first marker, split on the separator, is the turn's
    messages (blank pieces, marker debris dropped). Markers count malformed too. Inverse of
    `join_user_turn` for stripped messages that contain no marker."""
    end = _marker_pattern(end_marker).search(generated)
    text = generated[: end.start()] if end else generated
    names = [marker.strip(_MARKER_CHARACTERS) for marker in (end_marker, separator)]
    messages = []
    for piece in _marker_pattern(separator).split(text):
        cut = _CUT_MARKER.search(piece)
        if cut and any(name.startswith(cut.group(1)) for name in names):
            piece = piece[: cut.start()]
        piece = piece.strip()
        if piece.strip(_MARKER_CHARACTERS):
            messages.append(piece)
    return UserTurn(messages=tuple(messages), ends=end is not None)


# A sentence end inside a text: . ! ? or an ellipsis, a closing quote or bracket may follow, then a space.
_SENTENCE_END_IN_TEXT = re.compile(r"[.!?\u2026]+[\"')\]]*(?=\s)")


def trim_cut_turn(turn: UserTurn) -> UserTurn | None:
    """A turn cut at the token cap, ended where its writing last ended: its last message at that
    message's last complete sentence, or, when it has none, without that message if earlier ones
    are whole (a burst's earlier messages ended at a separator). None: no such place (one run-on
    message); the turn stays cut. A cut turn ends mid-word, which a discriminator spots at a glance
    and no DPO step can change: the budget's artifact, not the simulator's behaviour."""
    if turn.ends or not turn.messages:
        return turn
    *earlier, last = turn.messages
    sentence_ends = list(_SENTENCE_END_IN_TEXT.finditer(last + " "))
    if sentence_ends:
        return UserTurn(messages=(*earlier, last[: sentence_ends[-1].end()].strip()), ends=False)
    return UserTurn(messages=tuple(earlier), ends=False) if earlier else None


def is_end_of_conversation(generated: str, end_marker: str = DEFAULT_END_MARKER) -> bool:
    return parse_user_turn(generated, end_marker).ends
