"""What every judge takes and returns, the params, and blind item ids.

A judge reads whole sessions (`JudgeInput`: an opaque id and the messages) and returns two tables:

* `issues`: one row per issue, on the CHATBOT message it is about (`turn_index`), with the taxonomy
  group and category, a short evidence string and the judge's name;
* `user_actions`: one row per (USER message, action) label; a message can carry several actions.

Blindness: a judge must never learn which simulator (or whether a real user) produced a session, or
it could judge simulators differently. Callers therefore pass `opaque_id(session_id, salt)` as the
item id (a salted hash: session ids such as `sim-sft-...` name the simulator) and only the messages'
turn index, role and text; `judge_inputs` does both and orders items by opaque id, which mixes
simulators in the order a judge sees them.

Cut messages: a simulated message that our token budget cut (metadata `truncated`, see
`dial.simulation.simulate`) ends mid-sentence because of us, not the chatbot. `JudgeInput.truncated_turns`
names them, and judges never report "Incomplete message" (the taxonomy category with the
`incomplete_message` detector) on them. An LLM judge is not told (real messages are never cut, so
the note would reveal a simulated session): its issues on those turns are dropped afterwards.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from dial.errors import DialError
from dial.schemas import ROLES, is_truncated
from dial.params import JudgeEndpointParams, JudgeParams  # noqa: F401 (defined with the other params)

ISSUE_COLUMNS = ["item_id", "turn_index", "group", "category", "evidence", "judge"]
ACTION_COLUMNS = ["item_id", "turn_index", "group", "action", "judge"]
OPAQUE_ID_CHARS = 16  # hex digits of sha256: 64 bits, collisions are checked anyway
INCOMPLETE_MESSAGE_DETECTOR = "incomplete_message"  # names the category that cut messages never get


# --------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class JudgeInput:
    """One session as a judge sees it: an opaque id and (turn_index, role, text) messages in order.
    Roles are the data model's: `user` (the simulated or real user) and `assistant` (the chatbot).
    `truncated_turns`: turns our token budget cut (never "Incomplete message", see the module doc)."""

    item_id: str
    messages: tuple[tuple[int, str, str], ...]
    truncated_turns: frozenset[int]

    def __init__(self, item_id: str, messages: Sequence[tuple[int, str, str]], truncated_turns: Iterable[int] = ()) -> None:
        object.__setattr__(self, "item_id", item_id)
        object.__setattr__(self, "messages", tuple((int(t), str(r), str(x)) for t, r, x in messages))
        object.__setattr__(self, "truncated_turns", frozenset(int(t) for t in truncated_turns))
        if not isinstance(item_id, str) or not item_id.strip():
            raise DialError(f"judge input: item_id must be a non-empty string (got {item_id!r})")
        previous = -1
        for turn_index, role, _ in self.messages:
            if role not in ROLES:
                raise DialError(f"judge input {item_id!r}: turn {turn_index}: unknown role {role!r} (expected {' or '.join(ROLES)})")
            if turn_index <= previous:
                raise DialError(f"judge input {item_id!r}: turn indexes must increase (turn {turn_index} after {previous})")
            previous = turn_index
        unknown = sorted(self.truncated_turns - {t for t, _, _ in self.messages})
        if unknown:
            raise DialError(f"judge input {item_id!r}: truncated turn(s) {unknown} are not messages of the session")

    def turns(self, role: str) -> set[int]:
        return {t for t, r, _ in self.messages if r == role}


def opaque_id(session_id: str, salt: str) -> str:
    """A salted hash of a session id: stable for the same salt, meaningless to a judge."""
    return hashlib.sha256(f"{salt}\0{session_id}".encode()).hexdigest()[:OPAQUE_ID_CHARS]


def judge_inputs(messages: pd.DataFrame, salt: str) -> tuple[list[JudgeInput], dict[str, str]]:
    """Judge items from a `messages` table (session_id, turn_index, role, text, ...): one item per
    session, ordered by opaque id, and the map item_id → session_id to join the judgements back.
    Each session is judged as given: the evaluate stage passes sessions already cut like for like
    (`dial.evaluation.evaluate.cut_sessions`).
    Messages whose `metadata` marks them `truncated` become the item's `truncated_turns`."""
    missing = [c for c in ("session_id", "turn_index", "role", "text") if c not in messages.columns]
    if missing:
        raise DialError(f"judge_inputs: messages lack column(s) {missing}")
    id_map: dict[str, str] = {}
    items = []
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    for session_id, group in ordered.groupby("session_id", sort=True):
        item_id = opaque_id(str(session_id), salt)
        if item_id in id_map:
            raise DialError(f"judge_inputs: sessions {id_map[item_id]!r} and {session_id!r} hash to the same id; change judge.id_salt")
        id_map[item_id] = str(session_id)
        # No metadata (a bare table, or real rows concatenated with simulated ones): not cut.
        metadata = group["metadata"] if "metadata" in group.columns else pd.Series(None, index=group.index, dtype=object)
        cut = metadata.map(lambda m: isinstance(m, str) and is_truncated(m)).astype(bool)
        messages_of_session = list(zip(group["turn_index"], group["role"], group["text"]))
        items.append(JudgeInput(item_id, messages_of_session, truncated_turns=group.loc[cut, "turn_index"]))
    items.sort(key=lambda item: item.item_id)
    return items, id_map


# --------------------------------------------------------------------------------------------
# Judges


class Judge(ABC):
    """Annotates sessions with issues (on chatbot messages) and user actions (on user messages)."""

    name: str  # goes into the `judge` column

    @abstractmethod
    def annotate(self, items: Sequence[JudgeInput], progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(issues, user_actions) DataFrames with ISSUE_COLUMNS / ACTION_COLUMNS, sorted."""

    def close(self) -> None:
        """Release resources (thread pools); judges are also context managers."""

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_unique_ids(items: Sequence[JudgeInput]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen:
            raise DialError(f"judge input: duplicate item_id {item.item_id!r}")
        seen.add(item.item_id)


def incomplete_message_categories(taxonomy) -> frozenset[str]:
    """Names of the issue categories that say a chatbot message was left unfinished."""
    return frozenset(label.name for label in taxonomy.categories if INCOMPLETE_MESSAGE_DETECTOR in label.detectors)


def issue_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows → the issues table, deduplicated and sorted (deterministic for the same judgements)."""
    frame = pd.DataFrame(rows, columns=ISSUE_COLUMNS).astype({"turn_index": "int64"})
    frame = frame.drop_duplicates().sort_values(["item_id", "turn_index", "group", "category", "evidence"], kind="stable")
    return frame.reset_index(drop=True)


def action_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=ACTION_COLUMNS).astype({"turn_index": "int64"})
    frame = frame.drop_duplicates().sort_values(["item_id", "turn_index", "group", "action"], kind="stable")
    return frame.reset_index(drop=True)
