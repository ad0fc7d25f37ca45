"""`chitchat`: the Chit Chat Challenge dataset shipped in the `chitchat-dataset` package.

`dataset.json` maps a conversation id to `{"messages": [[burst], ...], "start", "prompt",
"ratings"}` where a burst is a list of `{"text", "timestamp", "sender"}` from one sender. The
conversation's first sender is the *user* we simulate, the other sender the *assistant*. Every
message stays its own turn (bursts are how real users write). Senders recur across conversations,
so a sender is a user with several sessions. The prompt is the session's topic; the ratings, the
other sender's id and any other conversation-level field go to the session metadata.

The file is read with `json` directly (the package's `Dataset` class leaves its file open).
`data.path` may point at another file in the same format (used by the tests).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from json.decoder import scanstring
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from dial.data.records import (
    BLANK_ID,
    MISTYPED_FIELD,
    ROLES,
    UNKNOWN_ROLE,
    Checker,
    Message,
    Problem,
    Row,
    Session,
    display_path,
    load_json_document,
    normalise_timestamp,
    reject_constant,
    type_name,
)
from dial.params import DataParams

CONVERSATION_FIELDS = ("messages", "start", "prompt", "ratings")
MESSAGE_FIELDS = ("text", "timestamp", "sender")


def dataset_path() -> Path:
    """`dataset.json` of the installed `chitchat-dataset` package."""
    return Path(str(importlib.resources.files("chitchat_dataset").joinpath("dataset.json")))


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def top_level_pairs(text: str) -> list[tuple[str, Any]]:
    """The (key, value) pairs of the top-level JSON object in file order, duplicates included
    (`json.load` would silently keep only the last of two conversations with the same id)."""
    decoder = json.JSONDecoder(parse_constant=reject_constant)

    def skip(index: int) -> int:
        return _WHITESPACE.match(text, index).end()

    index = skip(0)
    if text[index : index + 1] != "{":
        value, _ = decoder.raw_decode(text, index)  # raises on malformed JSON
        raise _NotAnObject(type_name(value))
    pairs: list[tuple[str, Any]] = []
    index = skip(index + 1)
    if text[index : index + 1] == "}":
        end = index + 1
    else:
        while True:
            if text[index : index + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
            key, index = scanstring(text, index + 1)
            index = skip(index)
            if text[index : index + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
            value, index = decoder.raw_decode(text, skip(index + 1))
            pairs.append((key, value))
            index = skip(index)
            if text[index : index + 1] == ",":
                index = skip(index + 1)
                continue
            if text[index : index + 1] != "}":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
            end = index + 1
            break
    if skip(end) != len(text):
        raise json.JSONDecodeError("Extra data", text, skip(end))
    return pairs


class _NotAnObject(Exception):
    """The file is JSON but not an object of conversations (not a ValueError: it is not malformed)."""


def _role(sender: str, roles: dict[str, str], senders: list[str]) -> str | None:
    """The first sender of a conversation is the user, the second the assistant, a third: None."""
    role = roles.get(sender)
    if role is None and len(senders) < 2:
        role = roles[sender] = ROLES[len(senders)]
        senders.append(sender)
    return role


def _fast_message(item: Any, roles: dict[str, str], senders: list[str], max_chars: int) -> Message | None:
    """A well-formed message without the per-field bookkeeping (None: take the slow path)."""
    if type(item) is not dict or len(item) != 3:
        return None
    sender, text, timestamp = item.get("sender"), item.get("text"), item.get("timestamp")
    if not (type(sender) is str and type(text) is str and type(timestamp) is str):
        return None
    if not (sender.strip() and text.strip() and len(text) <= max_chars):
        return None
    try:
        timestamp = normalise_timestamp(timestamp)
    except (ValueError, OverflowError):
        return None
    role = _role(sender, roles, senders)
    return None if role is None else Message(role, text, timestamp, {})


def parse_conversation(conversation_id: str, conversation: Any, check: Checker) -> Session | None:
    if not isinstance(conversation, dict):
        check.add(MISTYPED_FIELD, "", f"expected a conversation object, got {type_name(conversation)}")
        return None
    bursts = check.get(conversation, "messages", list, required=True)
    started_at = check.timestamp(conversation, "start")
    prompt = check.get(conversation, "prompt", str)
    ratings = check.get(conversation, "ratings", dict)
    if bursts is None:
        return None

    senders: list[str] = []
    roles: dict[str, str] = {}
    messages: list[Message] = []
    roles_ok, n_items = True, 0
    for burst_index, burst in enumerate(bursts):
        if not isinstance(burst, list):
            check.add(MISTYPED_FIELD, f"messages[{burst_index}]", f"expected a list of messages, got {type_name(burst)}")
            roles_ok = False
            continue
        for index, item in enumerate(burst):
            n_items += 1
            message = _fast_message(item, roles, senders, check.max_message_chars)
            if message is not None:
                messages.append(message)
                continue
            # Slow path: the same rules, but every deviation becomes a problem naming its field.
            prefix = f"messages[{burst_index}][{index}]."
            if not isinstance(item, dict):
                check.add(MISTYPED_FIELD, prefix[:-1], f"expected an object, got {type_name(item)}")
                roles_ok = False
                continue
            sender = check.identifier(item, "sender", prefix=prefix)
            role = _role(sender, roles, senders) if sender is not None else None
            if sender is not None and role is None:
                check.add(
                    UNKNOWN_ROLE,
                    prefix + "sender",
                    f"third sender {sender!r} (a conversation has two: the user {senders[0]!r} and "
                    f"the assistant {senders[1]!r})",
                )
            roles_ok = roles_ok and role is not None
            text = check.text(item, "text", prefix=prefix)
            timestamp = check.timestamp(item, "timestamp", prefix=prefix)
            extra = {key: value for key, value in item.items() if key not in MESSAGE_FIELDS}
            if role is not None and text is not None:
                messages.append(Message(role, text, timestamp, extra))
    check.require_user_message(messages, "messages", roles_ok=roles_ok and len(messages) == n_items)
    if not check.ok:
        return None

    metadata = {key: value for key, value in conversation.items() if key not in CONVERSATION_FIELDS}
    if ratings is not None:
        metadata["ratings"] = ratings
    if len(senders) > 1:
        metadata["assistant_sender"] = senders[1]
    return Session(
        session_id=conversation_id,
        user_id=senders[0],
        messages=messages,
        started_at=started_at,
        topic=prompt if prompt and prompt.strip() else None,
        metadata=metadata,
        tiebreak=(conversation_id,),
    )


def _raw_text(conversation_id: str, conversation: Any) -> Callable[[], str]:
    return lambda: json.dumps({conversation_id: conversation}, ensure_ascii=False)


def read_chitchat(params: DataParams, *, progress: bool = True) -> list[Row]:
    path = Path(params.path) if params.path else dataset_path()
    if not path.is_file():
        raise FileNotFoundError(f"{display_path(path)}: chitchat dataset.json not found")
    try:
        shown, pairs, failed = load_json_document(path, top_level_pairs)
    except _NotAnObject as exc:
        problem = Problem(MISTYPED_FIELD, "", f"expected an object of conversations, got {exc}")
        return [Row(display_path(path), 0, path.read_text(encoding="utf-8"), problems=[problem])]
    if failed:
        return failed

    rows = []
    for number, (conversation_id, conversation) in enumerate(
        tqdm(pairs, desc="read chitchat", unit="conversation", disable=not progress), start=1
    ):
        check = Checker(params.max_message_chars)
        if not conversation_id.strip():
            check.add(BLANK_ID, "", "blank conversation id")
        session = parse_conversation(conversation_id, conversation, check)
        # The raw text of a conversation is only serialised if the row is rejected.
        row = Row(shown, number, _raw_text(conversation_id, conversation), context=f"conversation {conversation_id!r}")
        row.problems, row.session = check.problems, (session if check.ok else None)
        rows.append(row)
    return rows
