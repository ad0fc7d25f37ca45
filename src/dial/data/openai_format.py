"""`openai` JSONL: the chat fine-tuning / chat-completions format, one conversation per line.

    {"messages": [{"role": "system", "content": "You are ..."},
                  {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
     "session_id": "optional", "user_id": "optional", "started_at": "optional ISO-8601",
     "chatbot_id": "optional", "metadata": {"optional": "object"}}

`timestamp` is accepted as a synonym of `started_at`. System (or `developer`) messages are the
chatbot's instructions, not turns: they are kept in the session metadata as `system_prompt` (several
are joined by a blank line). `content` may be a string or a list of `{"type": "text", "text": ...}`
parts (joined by a newline). Other top-level keys (e.g. `tools`) go to the session metadata, other
message keys (e.g. `name`, `weight`) to the message metadata. A missing `session_id` becomes
`<file name>:<line>`; a missing `user_id` makes each session its own user (`user_id = session_id`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dial.data.records import (
    MISTYPED_FIELD,
    ROLES,
    UNKNOWN_ROLE,
    Checker,
    Message,
    Row,
    Session,
    list_input_files,
    read_jsonl_rows,
    type_name,
)
from dial.params import DataParams

KNOWN_FIELDS = ("messages", "session_id", "user_id", "started_at", "timestamp", "chatbot_id", "metadata")
MESSAGE_FIELDS = ("role", "content", "timestamp", "metadata")
SYSTEM_ROLES = ("system", "developer")


def _content(item: dict, check: Checker, prefix: str) -> Any:
    """`content` as a string: plain, or the text parts of a content list joined by newlines."""
    content = item.get("content")
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                check.add(
                    MISTYPED_FIELD,
                    f"{prefix}content[{index}]",
                    f"expected a text part {{'type': 'text', 'text': ...}}, got {type_name(part)}",
                )
                return None
            texts.append(part["text"])
        return {"content": "\n".join(texts)}
    return item


def parse_session(obj: dict, check: Checker, path: Path, line: int) -> Session | None:
    session_id = check.identifier(obj, "session_id", required=False)
    user_id = check.identifier(obj, "user_id", required=False)
    key = "started_at" if obj.get("started_at") is not None else "timestamp"
    started_at = check.timestamp(obj, key)
    chatbot_id = check.get(obj, "chatbot_id", str)
    metadata = {key: value for key, value in obj.items() if key not in KNOWN_FIELDS}
    metadata.update(check.obj(obj, "metadata"))
    if "timestamp" in obj and key == "started_at":
        metadata["timestamp"] = obj["timestamp"]
    items = check.get(obj, "messages", list, required=True)
    if items is None:
        return None

    messages, system_prompts, roles_ok = [], [], True
    for index, item in enumerate(items):
        prefix = f"messages[{index}]."
        if not isinstance(item, dict):
            check.add(MISTYPED_FIELD, f"messages[{index}]", f"expected an object, got {type_name(item)}")
            roles_ok = False
            continue
        role = check.get(item, "role", str, prefix=prefix, required=True)
        if role is not None and role not in ROLES and role not in SYSTEM_ROLES:
            check.add(UNKNOWN_ROLE, prefix + "role", f"unknown role {role!r} (expected system, user or assistant)")
            role = None
        roles_ok = roles_ok and role is not None
        content_holder = _content(item, check, prefix)
        if content_holder is None:
            continue
        if role in SYSTEM_ROLES:
            system_prompt = check.get(content_holder, "content", str, prefix=prefix, required=True)
            if system_prompt is not None:
                system_prompts.append(system_prompt)
            continue
        text = check.text(content_holder, "content", prefix=prefix)
        timestamp = check.timestamp(item, "timestamp", prefix=prefix)
        message_metadata = {key: value for key, value in item.items() if key not in MESSAGE_FIELDS}
        message_metadata.update(check.obj(item, "metadata", prefix=prefix))
        if role is not None and text is not None:
            messages.append(Message(role, text, timestamp, message_metadata))
    n_turns = sum(1 for item in items if isinstance(item, dict) and item.get("role") not in SYSTEM_ROLES)
    check.require_user_message(messages, "messages", roles_ok=roles_ok and len(messages) == n_turns)
    if not check.ok:
        return None
    if system_prompts:
        metadata["system_prompt"] = "\n\n".join(system_prompts)
    session_id = session_id or f"{path.name}:{line}"
    return Session(
        session_id=session_id,
        user_id=user_id or session_id,
        messages=messages,
        started_at=started_at,
        chatbot_id=chatbot_id,
        metadata=metadata,
        tiebreak=(str(path), line),
    )


def read_openai(params: DataParams, *, progress: bool = True) -> list[Row]:
    files = list_input_files(Path(params.path), ("*.jsonl",))
    return read_jsonl_rows(files, parse_session, params.max_message_chars, desc="read", progress=progress)
