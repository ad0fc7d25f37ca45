"""`canonical` JSONL: the format a user brings, one session per line.

    {"session_id": "s-1", "user_id": "u-1", "started_at": "2024-05-01T09:30:00Z",
     "chatbot_id": "helpdesk-v2", "topic": "refund", "metadata": {"channel": "web"},
     "user_profile": {"plan": "pro"},
     "messages": [{"role": "user", "text": "hi, my order never came", "timestamp": "...",
                   "metadata": {}}, {"role": "assistant", "text": "..."}]}

Required: `session_id`, `user_id`, `messages` (each with `role` user|assistant and non-blank
`text`). Everything else is optional (null allowed). Unknown fields are errors (put extra data in
`metadata`), so a misspelt key is not silently lost.
"""

from __future__ import annotations

from pathlib import Path

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

SESSION_FIELDS = ("session_id", "user_id", "started_at", "chatbot_id", "topic", "metadata", "user_profile", "messages")
MESSAGE_FIELDS = ("role", "text", "timestamp", "metadata")


def parse_messages(items: list, check: Checker, field_name: str, known: tuple[str, ...]) -> tuple[list[Message], bool]:
    """Messages with `role`/`text`/`timestamp`/`metadata`; (messages, every role valid)."""
    messages, roles_ok = [], True
    for index, item in enumerate(items):
        prefix = f"{field_name}[{index}]."
        if not isinstance(item, dict):
            check.add(MISTYPED_FIELD, f"{field_name}[{index}]", f"expected an object, got {type_name(item)}")
            roles_ok = False
            continue
        check.unknown_fields(item, known, prefix=prefix, hint=" (put extra data in 'metadata')")
        role = check.get(item, "role", str, prefix=prefix, required=True)
        if role is not None and role not in ROLES:
            check.add(UNKNOWN_ROLE, prefix + "role", f"unknown role {role!r} (expected user or assistant)")
            role = None
        roles_ok = roles_ok and role is not None
        text = check.text(item, "text", prefix=prefix)
        timestamp = check.timestamp(item, "timestamp", prefix=prefix)
        metadata = check.obj(item, "metadata", prefix=prefix)
        if role is not None and text is not None:
            messages.append(Message(role, text, timestamp, metadata))
    return messages, roles_ok


def parse_session(obj: dict, check: Checker, path: Path, line: int) -> Session | None:
    check.unknown_fields(obj, SESSION_FIELDS, hint=" (put extra data in 'metadata')")
    session_id = check.identifier(obj, "session_id")
    user_id = check.identifier(obj, "user_id")
    started_at = check.timestamp(obj, "started_at")
    chatbot_id = check.get(obj, "chatbot_id", str)
    topic = check.get(obj, "topic", str)
    metadata = check.obj(obj, "metadata")
    profile = check.obj(obj, "user_profile")
    items = check.get(obj, "messages", list, required=True)
    if items is None:
        return None
    messages, roles_ok = parse_messages(items, check, "messages", MESSAGE_FIELDS)
    check.require_user_message(messages, "messages", roles_ok=roles_ok and len(messages) == len(items))
    if not check.ok:
        return None
    return Session(
        session_id=session_id,
        user_id=user_id,
        messages=messages,
        started_at=started_at,
        chatbot_id=chatbot_id,
        topic=topic if topic and topic.strip() else None,
        metadata=metadata,
        profile=profile,
        tiebreak=(str(path), line),
    )


def read_canonical(params: DataParams, *, progress: bool = True) -> list[Row]:
    files = list_input_files(Path(params.path), ("*.jsonl",))
    return read_jsonl_rows(files, parse_session, params.max_message_chars, desc="read", progress=progress)
