"""`esconv`: ESConv emotional-support conversations (Liu et al., ACL 2021; CC BY-NC 4.0).

Two layouts are read:

* the common split files (`train.jsonl`, `valid.jsonl`, `test.jsonl`), one conversation per line,
  `dialog` entries `{"text", "speaker": "usr"|"sys", "strategy"}`. `data.path` is one file or a
  directory (every `*.jsonl`, sorted by name); the file name (`train`, ...) is kept as
  `original_split` in the session metadata. Session id `esconv-<file stem>-<line>`.
* the original single file (`ESConv.json`): one JSON list of conversations, `dialog` entries
  `{"content", "speaker": "seeker"|"supporter", "annotation": {"strategy"?, "feedback"?}}`.
  Session id `esconv-<position in the list>` (1-based).

The seeker (`usr`) is the user, the supporter (`sys`) the assistant. Every conversation is its own
user (`user_id` = the session id). `situation` is the topic; strategies and feedback go to the
message metadata; survey scores, post-chat answers and the experience type to the session
metadata; emotion type, problem type, experience type and initial emotion intensity to the
user's profile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dial.data.records import (
    MISTYPED_FIELD,
    UNKNOWN_ROLE,
    Checker,
    Message,
    Problem,
    Row,
    Session,
    load_json_document,
    list_input_files,
    parse_json,
    read_jsonl_rows,
    type_name,
)
from dial.params import DataParams

SPEAKERS = {"usr": "user", "seeker": "user", "sys": "assistant", "supporter": "assistant"}
STRING_FIELDS = (
    "experience_type",
    "emotion_type",
    "problem_type",
    "situation",
    "seeker_question1",
    "seeker_question2",
    "supporter_question1",
    "supporter_question2",
)
KNOWN_FIELDS = (*STRING_FIELDS, "survey_score", "dialog")


def parse_conversation(
    obj: dict, check: Checker, session_id: str, *, original: bool, split: str | None
) -> Session | None:
    """One ESConv conversation; `original` selects the single-file layout of `dialog` entries."""
    strings = {key: check.get(obj, key, str) for key in STRING_FIELDS}
    survey = check.get(obj, "survey_score", dict)
    dialog = check.get(obj, "dialog", list, required=True)
    if dialog is None:
        return None
    text_key = "content" if original else "text"
    expected = "seeker or supporter" if original else "usr or sys"
    own_keys = ("speaker", text_key, "annotation") if original else ("speaker", text_key)
    messages, roles_ok = [], True
    for index, item in enumerate(dialog):
        prefix = f"dialog[{index}]."
        if not isinstance(item, dict):
            check.add(MISTYPED_FIELD, f"dialog[{index}]", f"expected an object, got {type_name(item)}")
            roles_ok = False
            continue
        speaker = check.get(item, "speaker", str, prefix=prefix, required=True)
        role = SPEAKERS.get(speaker) if speaker is not None else None
        if speaker is not None and role is None:
            check.add(UNKNOWN_ROLE, prefix + "speaker", f"unknown speaker {speaker!r} (expected {expected})")
        roles_ok = roles_ok and role is not None
        text = check.text(item, text_key, prefix=prefix)
        metadata: dict[str, Any] = {key: value for key, value in item.items() if key not in own_keys}
        if original:
            metadata.update(check.obj(item, "annotation", prefix=prefix))
        if role is not None and text is not None:
            messages.append(Message(role, text, None, metadata))
    check.require_user_message(messages, "dialog", roles_ok=roles_ok and len(messages) == len(dialog))
    if not check.ok:
        return None

    metadata = {key: value for key, value in obj.items() if key not in KNOWN_FIELDS}
    for key in ("experience_type", "seeker_question1", "seeker_question2", "supporter_question1", "supporter_question2"):
        if strings[key] is not None:
            metadata[key] = strings[key]
    if survey is not None:
        metadata["survey_score"] = survey
    if split is not None:
        metadata["original_split"] = split
    profile_keys = ("emotion_type", "problem_type", "experience_type")
    profile = {key: strings[key] for key in profile_keys if strings[key] is not None}
    seeker_scores = (survey or {}).get("seeker")
    if isinstance(seeker_scores, dict) and seeker_scores.get("initial_emotion_intensity") is not None:
        profile["initial_emotion_intensity"] = seeker_scores["initial_emotion_intensity"]
    situation = strings["situation"]
    return Session(
        session_id=session_id,
        user_id=session_id,
        messages=messages,
        topic=situation if situation and situation.strip() else None,
        metadata=metadata,
        profile=profile,
    )


def _is_json_list(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _read_list_file(path: Path, params: DataParams, progress: bool) -> list[Row]:
    shown, conversations, failed = load_json_document(path, parse_json, encoding="utf-8-sig")
    if failed:
        return failed
    if not isinstance(conversations, list):
        problem = Problem(MISTYPED_FIELD, "", f"expected a JSON list of conversations, got {type_name(conversations)}")
        return [Row(shown, 0, json.dumps(conversations, ensure_ascii=False), problems=[problem])]
    rows = []
    for number, conversation in enumerate(
        tqdm(conversations, desc=f"read {path.name}", unit="conversation", disable=not progress), start=1
    ):
        raw = json.dumps(conversation, ensure_ascii=False)
        row = Row(shown, number, raw, context=f"conversation {number} of the list")
        check = Checker(params.max_message_chars)
        if isinstance(conversation, dict):
            session = parse_conversation(conversation, check, f"esconv-{number}", original=True, split=None)
        else:
            check.add(MISTYPED_FIELD, "", f"expected a conversation object, got {type_name(conversation)}")
            session = None
        row.problems, row.session = check.problems, (session if check.ok else None)
        rows.append(row)
    return rows


def read_esconv(params: DataParams, *, progress: bool = True) -> list[Row]:
    if not params.path:
        raise FileNotFoundError(
            "data.path is empty: point it at the ESConv split files (e.g. ../shared/datasets/esconv) "
            "or the original ESConv.json"
        )
    rows: list[Row] = []
    for path in list_input_files(Path(params.path), ("*.jsonl",)):
        if _is_json_list(path):
            rows.extend(_read_list_file(path, params, progress))
            continue
        split = path.stem

        def parse(obj: dict, check: Checker, file: Path, line: int, split: str = split) -> Session | None:
            return parse_conversation(obj, check, f"esconv-{split}-{line}", original=False, split=split)

        rows.extend(read_jsonl_rows([path], parse, params.max_message_chars, desc="read", progress=progress))
    return rows
