"""What every source adapter produces, and the checks they share.

An adapter turns each input *row* (one JSONL line, one chitchat conversation, one record of a JSON
list) into a `Row`: the raw text as read, the `Session` it describes if it is valid, and otherwise
the `Problem`s found, each naming the field (`messages[3].role`) so the error points at the spot.
Nothing is dropped silently: a row is either a session or a problem row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from dial.errors import InputError

ROLES = ("user", "assistant")

# Problem kinds (the per-reason counts of reports/data.json).
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_FIELD = "missing_field"
MISTYPED_FIELD = "mistyped_field"
UNKNOWN_FIELD = "unknown_field"
BLANK_ID = "blank_id"
INVALID_TIMESTAMP = "invalid_timestamp"
UNKNOWN_ROLE = "unknown_role"
EMPTY_TEXT = "empty_text"
MESSAGE_TOO_LONG = "message_too_long"
NO_USER_MESSAGE = "no_user_message"
DUPLICATE_ID = "duplicate_id"


@dataclass(frozen=True)
class Problem:
    kind: str
    field: str  # "" when the whole row is unreadable (bad UTF-8, malformed JSON)
    message: str

    def describe(self) -> str:
        return f"field '{self.field}': {self.message}" if self.field else self.message


@dataclass
class Message:
    role: str
    text: str
    timestamp: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    session_id: str
    user_id: str
    messages: list[Message]
    started_at: str | None = None
    chatbot_id: str | None = None
    topic: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # This session's contribution to the user's profile (merged in session order, later keys win).
    profile: dict[str, Any] = field(default_factory=dict)
    # Orders a user's sessions with equal (or missing) started_at: input position or session id.
    tiebreak: tuple = ()


@dataclass
class Row:
    """One input row: valid (`session` set, no problems) or rejected (problems, no session)."""

    source_file: str
    line: int  # 1-based line / record / conversation number; 0 = the whole file
    raw: str | Callable[[], str]  # the row as read (a callable: serialised only when needed)
    session: Session | None = None
    problems: list[Problem] = field(default_factory=list)
    # Extra locator for messages, e.g. "conversation 'a07e…'" (chitchat) or "conversation 5 of the list".
    context: str = ""

    def raw_text(self) -> str:
        return self.raw() if callable(self.raw) else self.raw

    def where(self) -> str:
        return f"{self.source_file}:{self.line}: {self.context + ': ' if self.context else ''}"

    def describe(self, problem: Problem) -> str:
        return self.where() + problem.describe()

    def reason(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0].message
        return "; ".join(problem.describe() for problem in self.problems)


def dumps(value: Any) -> str:
    """The one JSON encoding of ids, metadata and profiles: sorted keys, real Unicode."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def display_path(path: str | Path) -> str:
    """A path as shown in errors, quarantine rows and reports: relative to the working directory
    when inside it (so artifacts do not depend on where the repository is checked out)."""
    path = Path(path)
    if path.is_absolute():
        resolved, cwd = path.resolve(), Path.cwd().resolve()
        if resolved.is_relative_to(cwd):
            return resolved.relative_to(cwd).as_posix()
    return path.as_posix()


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_EXPECTED_NAMES = {str: "a string", dict: "an object", list: "a list"}


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """`json.loads` that rejects NaN/Infinity (not JSON; they would break the JSON columns)."""
    return json.loads(text, parse_constant=reject_constant)


def normalise_timestamp(value: str) -> str:
    """ISO-8601 → "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" in UTC (naive times are taken as UTC)."""
    shaped = len(value) == 20 and value[10] == "T" and value[19] == "Z"
    if shaped and value[4] == value[7] == "-" and value[13] == value[16] == ":":
        # Already "YYYY-MM-DDTHH:MM:SSZ" (the common case): only check it is a real date and time.
        datetime.fromisoformat(value[:-1])
        return value
    text = value.strip()
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("z", "Z") else text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    if parsed.microsecond:
        return parsed.isoformat(timespec="microseconds").rstrip("0") + "Z"
    return parsed.isoformat(timespec="seconds") + "Z"


def timestamp_order(value: str | None) -> tuple:
    """Sort key for normalised timestamps (missing ones last)."""
    if value is None:
        return (1, datetime.max.replace(tzinfo=timezone.utc))
    return (0, datetime.fromisoformat(value[:-1] + "+00:00"))


class Checker:
    """Collects the problems of one row while the adapter reads its fields."""

    def __init__(self, max_message_chars: int) -> None:
        self.max_message_chars = max_message_chars
        self.problems: list[Problem] = []

    def add(self, kind: str, field_name: str, message: str) -> None:
        self.problems.append(Problem(kind, field_name, message))

    @property
    def ok(self) -> bool:
        return not self.problems

    def get(
        self,
        obj: dict,
        key: str,
        expected: type,
        *,
        prefix: str = "",
        required: bool = False,
        nullable: bool = True,
    ) -> Any:
        """obj[key] if present and of the expected JSON type, else None (and a problem if it matters)."""
        name = prefix + key
        if key not in obj:
            if required:
                self.add(MISSING_FIELD, name, "missing required field")
            return None
        value = obj[key]
        if value is None:
            if required or not nullable:
                self.add(MISTYPED_FIELD, name, f"expected {_EXPECTED_NAMES[expected]}, got null")
            return None
        if not isinstance(value, expected):
            self.add(MISTYPED_FIELD, name, f"expected {_EXPECTED_NAMES[expected]}, got {type_name(value)}")
            return None
        return value

    def identifier(self, obj: dict, key: str, *, prefix: str = "", required: bool = True) -> str | None:
        value = self.get(obj, key, str, prefix=prefix, required=required, nullable=not required)
        if value is not None and not value.strip():
            self.add(BLANK_ID, prefix + key, "blank id")
            return None
        return value

    def obj(self, obj: dict, key: str, *, prefix: str = "") -> dict:
        """An optional JSON-object field (metadata, profile); {} when absent or null."""
        return self.get(obj, key, dict, prefix=prefix) or {}

    def timestamp(self, obj: dict, key: str, *, prefix: str = "") -> str | None:
        value = self.get(obj, key, str, prefix=prefix)
        if value is None:
            return None
        try:
            return normalise_timestamp(value)
        except (ValueError, OverflowError):
            self.add(INVALID_TIMESTAMP, prefix + key, f"not an ISO-8601 timestamp: {value[:80]!r}")
            return None

    def text(self, obj: dict, key: str, *, prefix: str = "") -> str | None:
        value = self.get(obj, key, str, prefix=prefix, required=True)
        if value is None:
            return None
        if not value.strip():
            self.add(EMPTY_TEXT, prefix + key, "empty text" if not value else "whitespace-only text")
            return None
        if len(value) > self.max_message_chars:
            self.add(
                MESSAGE_TOO_LONG,
                prefix + key,
                f"message too long: {len(value)} characters (data.max_message_chars is {self.max_message_chars})",
            )
            return None
        return value

    def unknown_fields(self, obj: dict, known: set[str] | tuple[str, ...], *, prefix: str = "", hint: str = "") -> None:
        for key in sorted(set(obj) - set(known)):
            self.add(UNKNOWN_FIELD, prefix + key, f"unknown field{hint}")

    def require_user_message(self, messages: list[Message], field_name: str, *, roles_ok: bool = True) -> None:
        """A session must hold at least one user message (only checked when every role was valid,
        so one misspelt role is reported once, not twice)."""
        if not roles_ok:
            return
        if not messages:
            self.add(NO_USER_MESSAGE, field_name, "session has no messages (it needs at least one user message)")
        elif not any(message.role == "user" for message in messages):
            self.add(NO_USER_MESSAGE, field_name, "session has no user message")


def list_input_files(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    """`path` itself, or the files matching `patterns` in directory `path` (sorted by name)."""
    if not path.exists():
        raise FileNotFoundError(f"{display_path(path)}: data.path not found")
    if path.is_file():
        return [path]
    files = sorted({file for pattern in patterns for file in path.glob(pattern) if file.is_file()})
    if not files:
        raise InputError(f"{display_path(path)}: no input files matching {', '.join(patterns)} in this directory")
    return files


def jsonl_lines(path: Path) -> list[bytes]:
    """The raw lines of a JSONL file (bytes: decoding is per line, so one line of bad UTF-8
    costs that line only)."""
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if lines:
        lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
    return [line.removesuffix(b"\r") for line in lines]


def parse_jsonl_line(raw_bytes: bytes) -> tuple[str, Any, list[Problem]] | None:
    """(raw text, parsed object or None, problems) for one line; None for a blank line (not a row).
    A line must hold one JSON object."""
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = Problem(INVALID_UTF8, "", f"invalid UTF-8 at byte {exc.start} of the line")
        return raw_bytes.decode("utf-8", errors="replace"), None, [problem]
    if not text.strip():
        return None
    try:
        obj = parse_json(text)
    except json.JSONDecodeError as exc:
        return text, None, [Problem(MALFORMED_JSON, "", f"malformed JSON at column {exc.colno}: {exc.msg}")]
    except (ValueError, RecursionError) as exc:
        return text, None, [Problem(MALFORMED_JSON, "", f"malformed JSON: {exc}")]
    if not isinstance(obj, dict):
        return text, None, [Problem(MISTYPED_FIELD, "", f"expected one JSON object per line, got {type_name(obj)}")]
    return text, obj, []


def read_jsonl_rows(
    files: list[Path],
    parse: Callable[[dict, Checker, Path, int], Session | None],
    max_message_chars: int,
    *,
    desc: str,
    progress: bool = True,
) -> list[Row]:
    """Rows of JSONL files: `parse(obj, checker, file, line)` builds the session of one line."""
    rows: list[Row] = []
    for path in files:
        shown = display_path(path)
        lines = jsonl_lines(path)
        for number, raw_bytes in enumerate(
            tqdm(lines, desc=f"{desc} {path.name}", unit="row", disable=not progress), start=1
        ):
            parsed = parse_jsonl_line(raw_bytes)
            if parsed is None:
                continue
            text, obj, problems = parsed
            row = Row(shown, number, text, problems=problems)
            if obj is not None:
                checker = Checker(max_message_chars)
                session = parse(obj, checker, path, number)
                row.problems, row.session = checker.problems, (session if checker.ok else None)
            rows.append(row)
    return rows


def load_json_document(path: Path, parse: Callable[[str], Any], encoding: str = "utf-8") -> tuple[str, Any, list[Row]]:
    """Read and parse a whole-file JSON document: (shown path, parsed value, []), or, when the
    file is not valid UTF-8 / JSON, (shown path, None, [one Row carrying the problem])."""
    shown = display_path(path)
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        problem = Problem(INVALID_UTF8, "", f"invalid UTF-8 at byte {exc.start} of the file")
        return shown, None, [Row(shown, 0, data.decode("utf-8", errors="replace"), problems=[problem])]
    try:
        return shown, parse(text), []
    except json.JSONDecodeError as exc:
        problem = Problem(MALFORMED_JSON, "", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
    except (ValueError, RecursionError) as exc:
        problem = Problem(MALFORMED_JSON, "", f"malformed JSON: {exc}")
    return shown, None, [Row(shown, 0, text, problems=[problem])]
