"""Invariants that span artifacts, as DuckDB queries over one view per artifact.

Each check is a query returning the violating rows (empty = pass). Stages run the checks of their
inputs and outputs before publishing; `dial check --all` runs every check whose views exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import duckdb
import pandas as pd

from dial.errors import DialError

# Patterns that must never survive scrubbing (also the PII stage's leak gate).
EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
PHONE_PATTERN = r"(\+?\d{1,3}[\s.\-]?)?(\(\d{3}\)|\b\d{3})[\s.\-]\d{3}[\s.\-]\d{4}\b"


class CheckError(DialError):
    pass


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    views: tuple[str, ...]
    sql: str  # selects violating rows; `{max_...}` placeholders are filled from `limits`


CHECKS: tuple[Check, ...] = (
    Check(
        "message_session_exists",
        "every message belongs to a known session",
        ("messages", "sessions"),
        "SELECT session_id, turn_index FROM messages ANTI JOIN sessions USING (session_id)",
    ),
    Check(
        "session_has_user_message",
        "every session has at least one user message",
        ("messages", "sessions"),
        "SELECT session_id FROM sessions s WHERE NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.session_id = s.session_id AND m.role = 'user')",
    ),
    Check(
        "turns_contiguous",
        "turn indices are 0..n-1 within each session",
        ("messages",),
        "SELECT session_id, count(*) AS n, min(turn_index) AS first, max(turn_index) AS last FROM messages "
        "GROUP BY session_id HAVING min(turn_index) <> 0 OR max(turn_index) <> count(*) - 1 "
        "OR count(DISTINCT turn_index) <> count(*)",
    ),
    Check(
        "roles_valid",
        "roles are user or assistant",
        ("messages",),
        "SELECT session_id, turn_index, role FROM messages WHERE role NOT IN ('user', 'assistant')",
    ),
    Check(
        "text_not_empty",
        "no empty or whitespace-only message",
        ("messages",),
        "SELECT session_id, turn_index FROM messages WHERE trim(text) = ''",
    ),
    Check(
        "session_user_exists",
        "every session's user is in the users table",
        ("sessions", "users"),
        "SELECT session_id, user_id FROM sessions ANTI JOIN users USING (user_id)",
    ),
    Check(
        "no_pii_pattern",
        "no email address or phone number pattern in any message",
        ("messages",),
        f"SELECT session_id, turn_index FROM messages WHERE regexp_matches(text, '{EMAIL_PATTERN}') "
        f"OR regexp_matches(text, '{PHONE_PATTERN}')",
    ),
    Check(
        "splits_cover_users",
        "every user has a split",
        ("users", "splits"),
        "SELECT user_id FROM users ANTI JOIN splits USING (user_id)",
    ),
    Check(
        "splits_disjoint",
        "no user in two splits",
        ("splits",),
        "SELECT user_id, count(DISTINCT split) AS n FROM splits GROUP BY user_id HAVING count(*) > 1",
    ),
    Check(
        "contexts_cover_sessions",
        "every session has a context",
        ("sessions", "contexts"),
        "SELECT session_id FROM sessions ANTI JOIN contexts USING (session_id)",
    ),
    Check(
        "contexts_within_budget",
        "every context fits context.max_tokens",
        ("contexts",),
        "SELECT session_id, n_tokens FROM contexts WHERE n_tokens > {max_context_tokens}",
    ),
    Check(
        "samples_within_budget",
        "every SFT sample fits sft_samples.max_tokens",
        ("sft_samples",),
        "SELECT sample_id, n_prompt_tokens + n_completion_tokens AS n FROM sft_samples "
        "WHERE n_prompt_tokens + n_completion_tokens > {max_sample_tokens}",
    ),
    Check(
        "samples_split_matches_user",
        "every SFT sample carries its user's split",
        ("sft_samples", "splits"),
        "SELECT sample_id, s.split, p.split AS user_split FROM sft_samples s "
        "LEFT JOIN splits p USING (user_id) WHERE p.split IS NULL OR s.split <> p.split",
    ),
    Check(
        "samples_sessions_exist",
        "every SFT sample comes from a known session",
        ("sft_samples", "sessions"),
        "SELECT sample_id, session_id FROM sft_samples ANTI JOIN sessions USING (session_id)",
    ),
)
CHECKS_BY_NAME = {check.name: check for check in CHECKS}


def connect(views: Mapping[str, pd.DataFrame | Path | str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per artifact (a DataFrame or a Parquet path)."""
    con = duckdb.connect(":memory:")
    for name, source in views.items():
        if isinstance(source, pd.DataFrame):
            con.register(name, source)
        else:
            path = str(source).replace("'", "''")
            con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{path}')")
    return con


@dataclass(frozen=True)
class CheckResult:
    check: Check
    n_violations: int
    examples: pd.DataFrame

    @property
    def passed(self) -> bool:
        return self.n_violations == 0


def run_checks(
    con: duckdb.DuckDBPyConnection,
    names: list[str] | None = None,
    limits: Mapping[str, int] | None = None,
    available: set[str] | None = None,
) -> list[CheckResult]:
    """Run the named checks (default: all whose views are `available`)."""
    limits = dict(limits or {})
    selected = [CHECKS_BY_NAME[name] for name in names] if names else list(CHECKS)
    results = []
    for check in selected:
        if available is not None and not set(check.views) <= available:
            continue
        sql = check.sql
        for key, value in limits.items():
            sql = sql.replace("{" + key + "}", str(int(value)))
        if re.search(r"\{max_\w+\}", sql):
            continue  # a budget check whose limit was not given
        violations = con.execute(f"SELECT * FROM ({sql}) LIMIT 5").df()
        count = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0] if len(violations) else 0
        results.append(CheckResult(check, int(count), violations))
    return results


def assert_checks(views: Mapping[str, pd.DataFrame | Path | str], names: list[str], limits=None, where: str = "") -> None:
    """Raise CheckError naming every failed invariant with example rows."""
    results = run_checks(connect(views), names, limits)
    failed = [result for result in results if not result.passed]
    if failed:
        lines = [f"{where}: cross-artifact checks failed:" if where else "cross-artifact checks failed:"]
        for result in failed:
            lines.append(f"  {result.check.name} ({result.check.description}): {result.n_violations} violation(s), e.g.")
            lines.append("    " + result.examples.to_string(index=False).replace("\n", "\n    "))
        raise CheckError("\n".join(lines))
