"""Chatbot-side messages from real chats, labelled by hand, to measure how precise the judges are.

The set (`tests/fixtures/judge_labels.jsonl`; how it was drawn and labelled: docs/judges.md) has one
row per assistant (supporter) message: where it is (`source`, `session_id`, `turn_index`), how it
was drawn (`round`, `drawn_as`: a rules detector whose flags it came from, or `unflagged`) and the
issue categories of the taxonomy a reader found in it (`categories`, often none). Chitchat rows also
carry the message and the user message before it (the chitchat dataset is MIT); ESConv rows never
carry text (CC BY-NC): `read_sessions` reads those sessions from the ESConv folder at run time, with
the same session ids and turn indexes as the ingest stage (`esconv-<split>-<line>`, the message's
position in the dialog).

`bench/judge_bench.py` runs the judges on the whole sessions and compares their verdicts on the
labelled turns with these labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dial.data import chitchat, esconv
from dial.data.records import Checker
from dial.errors import DialError
from dial.evaluation.taxonomy import Taxonomy
from dial.params import DataParams

SOURCES = ("chitchat", "esconv")
UNFLAGGED = "unflagged"  # drawn at random among the messages no detector flagged
Message = tuple[int, str, str]  # (turn_index, role, text), as the judges read them


@dataclass(frozen=True)
class LabelledMessage:
    source: str
    session_id: str
    turn_index: int
    round: int  # 1: drawn with the detectors of 52f54fa; 2, 3: drawn again after a detector changed; 4, 5: held-out draws
    drawn_as: str  # the detector whose flags it was drawn from, or UNFLAGGED
    categories: frozenset[str]  # issue categories a reader found (empty: no issue)
    text: str | None  # chitchat only
    previous_user: str | None  # chitchat only: the user message before it, for a reader's context
    stratum_size: int | None = None  # held-out draw: how many messages of its corpus its stratum holds

    @property
    def key(self) -> tuple[str, str]:
        return self.source, self.session_id


def load_labelled_messages(path: Path, taxonomy: Taxonomy) -> list[LabelledMessage]:
    """The rows of a labels file, checked: known source and category names, text only (and always)
    for chitchat, no message twice. Errors name the file and line."""
    rows: list[LabelledMessage] = []
    seen: set[tuple[str, str, int]] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
            row = LabelledMessage(
                source=raw["source"], session_id=raw["session_id"], turn_index=int(raw["turn_index"]), round=int(raw["round"]),
                drawn_as=raw["drawn_as"], categories=frozenset(raw["categories"]), text=raw.get("text"),
                previous_user=raw.get("previous_user"), stratum_size=raw.get("stratum_size"))
        except (ValueError, KeyError, TypeError) as exc:
            raise DialError(f"{where}: not a labelled message ({type(exc).__name__}: {exc})") from None
        if row.source not in SOURCES:
            raise DialError(f"{where}: unknown source {row.source!r} (expected {' or '.join(SOURCES)})")
        unknown = sorted(name for name in row.categories if taxonomy.category(name) is None)
        if unknown:
            raise DialError(f"{where}: unknown issue categor{'y' if len(unknown) == 1 else 'ies'} {unknown} (not in the taxonomy)")
        if (row.source == "chitchat") != (row.text is not None):
            raise DialError(f"{where}: chitchat rows carry the message text and ESConv rows never do (CC BY-NC)")
        position = (row.source, row.session_id, row.turn_index)
        if position in seen:
            raise DialError(f"{where}: {row.source} {row.session_id} turn {row.turn_index} is labelled twice")
        seen.add(position)
        rows.append(row)
    return rows


def load_second_rater(path: Path, taxonomy: Taxonomy) -> list[tuple[str, str, int, frozenset[str]]]:
    """A second rater's blind labels of messages of a labelled file (`judge_labels_second_rater.jsonl`:
    60 of the design set; `judge_labels_second_rater_round5.jsonl`: all of round 5): rows of source,
    session_id, turn_index, categories, no text; returned as (source, session_id, turn, categories)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        unknown = sorted(name for name in raw["categories"] if taxonomy.category(name) is None)
        if unknown or raw["source"] not in SOURCES or {"text", "previous_user"} & set(raw):
            raise DialError(f"{path}:{number}: unknown categories {unknown}, unknown source or text in a second-rater row")
        rows.append((raw["source"], raw["session_id"], int(raw["turn_index"]), frozenset(raw["categories"])))
    return rows


def read_sessions(labelled: Sequence[LabelledMessage], esconv_dir: Path) -> dict[tuple[str, str], list[Message]]:
    """The whole sessions of the labelled messages, keyed by (source, session_id): chitchat from the
    installed `chitchat-dataset` package, ESConv from `esconv_dir` (its split files). Checks that
    each labelled turn is an assistant message, and for chitchat that the stored text is its text."""
    wanted = {source: sorted({row.session_id for row in labelled if row.source == source}) for source in SOURCES}
    sessions = {("chitchat", sid): messages for sid, messages in _chitchat_sessions(wanted["chitchat"]).items()}
    sessions.update({("esconv", sid): messages for sid, messages in _esconv_sessions(wanted["esconv"], esconv_dir).items()})
    for row in labelled:
        messages = sessions[row.key]
        if not 0 <= row.turn_index < len(messages) or messages[row.turn_index][1] != "assistant":
            raise DialError(f"{row.source} {row.session_id} turn {row.turn_index}: not an assistant message of the session")
        if row.text is not None and messages[row.turn_index][2] != row.text:
            raise DialError(f"{row.source} {row.session_id} turn {row.turn_index}: the stored text differs from the dataset's")
    return sessions


def _as_messages(session) -> list[Message]:
    return [(index, message.role, message.text) for index, message in enumerate(session.messages)]


def _chitchat_sessions(session_ids: Sequence[str]) -> dict[str, list[Message]]:
    if not session_ids:
        return {}
    with open(chitchat.dataset_path(), encoding="utf-8") as handle:
        conversations = json.load(handle)
    sessions = {}
    for session_id in session_ids:
        if session_id not in conversations:
            raise DialError(f"chitchat: conversation {session_id!r} not in the installed dataset")
        check = Checker(DataParams().max_message_chars)
        session = chitchat.parse_conversation(session_id, conversations[session_id], check)
        if session is None:
            raise DialError(f"chitchat: conversation {session_id!r} does not parse: {check.problems}")
        sessions[session_id] = _as_messages(session)
    return sessions


def _esconv_sessions(session_ids: Sequence[str], esconv_dir: Path) -> dict[str, list[Message]]:
    """ESConv sessions by ingest id `esconv-<split>-<line>` (line 1-based in `<split>.jsonl`)."""
    lines_by_split: dict[str, list[str]] = {}
    sessions = {}
    for session_id in session_ids:
        _, split, line = session_id.split("-", 2)
        if split not in lines_by_split:
            path = Path(esconv_dir) / f"{split}.jsonl"
            if not path.is_file():
                raise DialError(f"ESConv: {path} not found (the labelled set reads ESConv in place)")
            lines_by_split[split] = path.read_text(encoding="utf-8").splitlines()
        check = Checker(DataParams().max_message_chars)
        conversation = json.loads(lines_by_split[split][int(line) - 1])
        session = esconv.parse_conversation(conversation, check, session_id, original=False, split=split)
        if session is None:
            raise DialError(f"ESConv: {session_id} does not parse: {check.problems}")
        sessions[session_id] = _as_messages(session)
    return sessions
