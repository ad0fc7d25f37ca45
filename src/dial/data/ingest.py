"""Stage `ingest`: a source (chitchat, ESConv, canonical or OpenAI JSONL) → the canonical tables.

1. the adapter of `data.source` turns every input row into a session or a list of problems;
2. duplicate session ids are problems too (the first occurrence keeps the id);
3. `data.on_bad_rows: fail` stops with every problem listed (file:line: field: reason);
   `quarantine` writes the bad rows with their reasons to `quarantine/ingest.parquet` and goes on;
4. each user's sessions get `session_index` 0, 1, 2… in time order (`started_at`, then input
   position, or the conversation id for chitchat; sessions without `started_at` last);
5. a deterministic sample of whole users (`data.max_sessions`, `data.seed`);
6. sessions / messages / users Parquet files and `reports/data.json`, which balances the books:
   `rows_in == rows_out + rows_quarantined`.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
from tqdm.auto import tqdm

from dial import io, paths
from dial.data.canonical import read_canonical
from dial.data.chitchat import dataset_path, read_chitchat
from dial.data.esconv import read_esconv
from dial.data.openai_format import read_openai
from dial.data.records import DUPLICATE_ID, Problem, Row, Session, display_path, dumps, timestamp_order
from dial.errors import InputError
from dial.params import DataParams

ADAPTERS: dict[str, Callable[..., list[Row]]] = {
    "canonical": read_canonical,
    "openai": read_openai,
    "chitchat": read_chitchat,
    "esconv": read_esconv,
}
MAX_LISTED_PROBLEMS = 20
QUARANTINE_FILE = "ingest.parquet"


@dataclass(frozen=True)
class IngestResult:
    sessions: pd.DataFrame
    messages: pd.DataFrame
    users: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict


def read_rows(params: DataParams, *, progress: bool = True) -> list[Row]:
    """Every input row of `data.source`, each a valid session or a rejected row with problems."""
    rows = ADAPTERS[params.source](params, progress=progress)
    mark_duplicates(rows)
    return rows


def mark_duplicates(rows: list[Row]) -> None:
    """A session id seen before makes the later row bad (the first occurrence keeps it)."""
    first: dict[str, Row] = {}
    for row in rows:
        if row.session is None:
            continue
        session_id = row.session.session_id
        if session_id in first:
            owner = first[session_id]
            row.problems.append(
                Problem(
                    DUPLICATE_ID,
                    "session_id",
                    f"duplicate session_id {session_id!r} (first at {owner.source_file}:{owner.line})",
                )
            )
            row.session = None
        else:
            first[session_id] = row


def problems_message(bad: list[Row], n_rows: int, quarantine_path: Path) -> str:
    listed = [row.describe(problem) for row in bad for problem in row.problems]
    lines = [f"{len(bad)} of {n_rows} input rows are bad input:"]
    lines += [f"  {line}" for line in listed[:MAX_LISTED_PROBLEMS]]
    if len(listed) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(listed) - MAX_LISTED_PROBLEMS} more")
    lines.append(
        "Fix the input, or set `data.on_bad_rows: quarantine` in params.yaml to skip bad rows "
        f"(they are written with their reasons to {quarantine_path})."
    )
    return "\n".join(lines)


def quarantine_frame(bad: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": pd.Series([row.source_file for row in bad], dtype=object),
            "line": pd.Series([row.line for row in bad], dtype="int64"),
            "field": pd.Series([row.problems[0].field for row in bad], dtype=object),
            "reason": pd.Series([row.reason() for row in bad], dtype=object),
            "raw": pd.Series([row.raw_text() for row in bad], dtype=object),
        }
    )


def order_user_sessions(sessions: list[Session]) -> dict[str, list[Session]]:
    """Each user's sessions in time order (index in the list = session_index)."""
    by_user: dict[str, list[Session]] = defaultdict(list)
    for session in sessions:
        by_user[session.user_id].append(session)
    for user_sessions in by_user.values():
        user_sessions.sort(key=lambda s: (timestamp_order(s.started_at), s.tiebreak, s.session_id))
    return dict(by_user)


def _order_key(seed: int, user_id: str) -> str:
    return hashlib.sha256(f"{seed}:{user_id}".encode()).hexdigest()


def sample_users(session_counts: Mapping[str, int], max_sessions: int, seed: int) -> list[str]:
    """Whole users in a seeded order until `max_sessions` sessions (0 = every user).

    A user whose sessions would overshoot the budget is skipped and the next ones are tried, so the
    sample fills up to `max_sessions` without ever splitting a user's history; the first user in
    the order is always taken, even if alone over budget.
    """
    ordered = sorted(session_counts, key=lambda user_id: (_order_key(seed, user_id), user_id))
    if max_sessions == 0:
        return ordered
    chosen, total = [], 0
    for user_id in ordered:
        n = session_counts[user_id]
        if not chosen or total + n <= max_sessions:
            chosen.append(user_id)
            total += n
        if total >= max_sessions:
            break
    return chosen


def build_tables(
    by_user: Mapping[str, list[Session]], user_ids: list[str], source: str, *, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    sessions: dict[str, list] = defaultdict(list)
    messages: dict[str, list] = defaultdict(list)
    users: dict[str, list] = defaultdict(list)
    for user_id in tqdm(sorted(user_ids), desc="convert sessions", unit="user", disable=not progress):
        profile: dict = {}
        for index, session in enumerate(by_user[user_id]):
            profile.update(session.profile)
            for column, value in (
                ("session_id", session.session_id),
                ("user_id", user_id),
                ("source", source),
                ("session_index", index),
                ("started_at", session.started_at),
                ("chatbot_id", session.chatbot_id),
                ("topic", session.topic),
                ("metadata", dumps(session.metadata)),
            ):
                sessions[column].append(value)
            for turn, message in enumerate(session.messages):
                messages["session_id"].append(session.session_id)
                messages["turn_index"].append(turn)
                messages["role"].append(message.role)
                messages["text"].append(message.text)
                messages["timestamp"].append(message.timestamp)
                messages["metadata"].append(dumps(message.metadata))
        users["user_id"].append(user_id)
        users["source"].append(source)
        users["n_sessions"].append(len(by_user[user_id]))
        users["profile"].append(dumps(profile))
    return _frame(sessions, "session_index"), _frame(messages, "turn_index"), _frame(users, "n_sessions")


def _frame(columns: dict[str, list], int_column: str) -> pd.DataFrame:
    return pd.DataFrame(
        {name: pd.Series(values, dtype="int64" if name == int_column else object) for name, values in columns.items()}
    )


def ingest_report(
    params: DataParams,
    rows: list[Row],
    bad: list[Row],
    by_user: Mapping[str, list[Session]],
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    users: pd.DataFrame,
) -> dict:
    rows_out = sum(len(user_sessions) for user_sessions in by_user.values())
    reasons = Counter(kind for row in bad for kind in {problem.kind for problem in row.problems})  # rows per kind
    report = {
        "source": params.source,
        "path": display_path(params.path) if params.path else display_path(dataset_path()),
        "input_files": sorted({row.source_file for row in rows}),
        "on_bad_rows": params.on_bad_rows,
        "max_sessions": params.max_sessions,
        "seed": params.seed,
        "rows_in": len(rows),
        "rows_out": rows_out,
        "rows_quarantined": len(bad),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "users_available": len(by_user),
        "users_available_with_multiple_sessions": sum(1 for s in by_user.values() if len(s) > 1),
        "sessions_sampled": len(sessions),
        "users": len(users),
        "users_with_multiple_sessions": int((users["n_sessions"] > 1).sum()),
        "max_sessions_per_user": int(users["n_sessions"].max()),
        "messages": len(messages),
        "user_messages": int((messages["role"] == "user").sum()),
        "assistant_messages": int((messages["role"] == "assistant").sum()),
        "sessions_without_assistant_message": int(
            len(set(sessions["session_id"]) - set(messages.loc[messages["role"] == "assistant", "session_id"]))
        ),
    }
    assert report["rows_in"] == report["rows_out"] + report["rows_quarantined"], report
    return report


def run_ingest(
    params: DataParams,
    out_dir: Path = paths.INGESTED_DIR,
    quarantine_dir: Path = paths.QUARANTINE_DIR,
    report_path: Path = paths.DATA_REPORT,
    *,
    progress: bool = True,
) -> IngestResult:
    """Stage: read `data.source`, reject or quarantine bad rows, sample users, write the tables."""
    out_dir, quarantine_dir, report_path = Path(out_dir), Path(quarantine_dir), Path(report_path)
    quarantine_path = quarantine_dir / QUARANTINE_FILE
    rows = read_rows(params, progress=progress)
    bad = [row for row in rows if row.problems]
    if bad and params.on_bad_rows == "fail":
        raise InputError(problems_message(bad, len(rows), quarantine_path))
    quarantine = quarantine_frame(bad)
    io.QUARANTINE.write(quarantine, quarantine_path)

    by_user = order_user_sessions([row.session for row in rows if row.session is not None])
    if not by_user:
        where = display_path(params.path) if params.path else display_path(dataset_path())
        raise InputError(
            f"{where}: no valid sessions ({len(rows)} input rows, {len(bad)} rejected"
            + (f", see {quarantine_path})" if bad else ")")
        )
    chosen = sample_users({user_id: len(s) for user_id, s in by_user.items()}, params.max_sessions, params.seed)
    sessions, messages, users = build_tables(by_user, chosen, params.source, progress=progress)
    io.SESSIONS.write(sessions, paths.sessions_file(out_dir))
    io.MESSAGES.write(messages, paths.messages_file(out_dir))
    io.USERS.write(users, paths.users_file(out_dir))
    report = ingest_report(params, rows, bad, by_user, sessions, messages, users)
    io.write_json_atomic(report_path, report)
    return IngestResult(sessions, messages, users, quarantine, report)
