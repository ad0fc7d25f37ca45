"""Split users (never sessions) into train / valid / test, deterministically by seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from dial.params import SplitParams


def _order_key(seed: int, user_id: str) -> str:
    return hashlib.sha256(f"{seed}:{user_id}".encode()).hexdigest()


def split_users(users: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Assign each user one split. Shares are of users; with >= 3 users every split that has a
    non-zero fraction gets at least one user, and train always keeps at least one."""
    ordered = sorted(users["user_id"], key=lambda user_id: _order_key(params.seed, user_id))
    n = len(ordered)
    n_test = round(n * params.test_fraction)
    n_valid = round(n * params.valid_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if params.test_fraction > 0 else 0)
        n_valid = max(n_valid, 1 if params.valid_fraction > 0 else 0)
    while n_test + n_valid >= n and n_test + n_valid > 0:  # keep at least one training user
        if n_valid >= n_test and n_valid > 0:
            n_valid -= 1
        else:
            n_test -= 1
    labels = ["test"] * n_test + ["valid"] * n_valid + ["train"] * (n - n_test - n_valid)
    return pd.DataFrame({"user_id": ordered, "split": labels})


def split_report(splits: pd.DataFrame, sessions: pd.DataFrame, messages: pd.DataFrame) -> dict:
    session_split = sessions[["session_id", "user_id"]].merge(splits, on="user_id", how="left")
    message_split = messages[["session_id", "role"]].merge(session_split, on="session_id", how="left")
    report = {}
    for split in ("train", "valid", "test"):
        in_split = message_split[message_split["split"] == split]
        report[split] = {
            "users": int((splits["split"] == split).sum()),
            "sessions": int((session_split["split"] == split).sum()),
            "messages": int(len(in_split)),
            "user_messages": int((in_split["role"] == "user").sum()),
        }
    return report


def run_split(params: SplitParams, scrubbed_dir: Path, out_path: Path, report_path: Path) -> pd.DataFrame:
    """Stage: users → train/valid/test, with sizes in the report."""
    from dial import io, paths
    from dial.checks import assert_checks

    sessions = io.SESSIONS.read(paths.sessions_file(scrubbed_dir))
    messages = io.MESSAGES.read(paths.messages_file(scrubbed_dir))
    users = io.USERS.read(paths.users_file(scrubbed_dir))
    splits = split_users(users, params)
    assert_checks({"users": users, "splits": splits}, ["splits_cover_users", "splits_disjoint"], where=str(out_path))
    io.SPLITS.write(splits, out_path)
    io.write_json_atomic(report_path, split_report(splits, sessions, messages))
    return splits
