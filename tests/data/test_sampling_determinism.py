"""Sampling draws whole users deterministically; the same inputs give byte-identical outputs."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import FIXTURES, session_line, write_jsonl

from dial.data.ingest import sample_users


@settings(max_examples=200, deadline=None)
@given(
    counts=st.dictionaries(st.text("abcdef", min_size=1, max_size=6), st.integers(1, 30), min_size=1, max_size=40),
    max_sessions=st.integers(0, 120),
    seed=st.integers(0, 10**6),
)
def test_sample_is_whole_users_within_budget(counts, max_sessions, seed):
    chosen = sample_users(counts, max_sessions, seed)
    assert len(chosen) == len(set(chosen)) >= 1 and set(chosen) <= set(counts)
    total = sum(counts[user] for user in chosen)
    if max_sessions == 0:
        assert set(chosen) == set(counts)
    elif len(chosen) > 1:
        assert total <= max_sessions
    # Greedy fill: no user left out would still have fitted in the remaining budget.
    if max_sessions and total <= max_sessions:
        assert all(total + counts[user] > max_sessions for user in set(counts) - set(chosen))
    # Deterministic and independent of the input order.
    shuffled = dict(random.Random(seed).sample(sorted(counts.items()), len(counts)))
    assert sample_users(shuffled, max_sessions, seed) == chosen


def test_seed_changes_the_sample():
    counts = {f"user-{i}": 1 + i % 3 for i in range(100)}
    samples = {tuple(sorted(sample_users(counts, 20, seed))) for seed in range(5)}
    assert len(samples) == 5


def many_users_file(tmp_path):
    lines = []
    for user in range(30):
        for session in range(1 + user % 4):
            lines.append(
                session_line(f"s-{user}-{session}", f"u-{user}", started_at=f"2024-01-{session + 1:02d}T10:00:00Z")
            )
    return write_jsonl(tmp_path / "logs.jsonl", lines), len(lines)


def test_ingest_sample_keeps_whole_users(ingest, tmp_path):
    path, n_lines = many_users_file(tmp_path)
    full = ingest(source="canonical", path=str(path))
    sampled = ingest(source="canonical", path=str(path), max_sessions=15, seed=7)
    assert full.report["sessions_sampled"] == n_lines
    assert sampled.report["sessions_sampled"] == len(sampled.sessions) == 15
    assert sampled.report["rows_out"] == n_lines  # rows_out counts valid rows before sampling
    n_sessions_full = full.users.set_index("user_id")["n_sessions"]
    for user in sampled.users.itertuples(index=False):
        assert user.n_sessions == n_sessions_full[user.user_id]  # every session of a chosen user
        indexes = sampled.sessions[sampled.sessions["user_id"] == user.user_id]["session_index"]
        assert sorted(indexes) == list(range(user.n_sessions))
    assert set(sampled.messages["session_id"]) == set(sampled.sessions["session_id"])
    again = ingest(source="canonical", path=str(path), max_sessions=15, seed=7)
    other = ingest(source="canonical", path=str(path), max_sessions=15, seed=8)
    assert again.sessions.equals(sampled.sessions)
    assert set(other.sessions["session_id"]) != set(sampled.sessions["session_id"])


def test_two_runs_write_byte_identical_files(ingest, tmp_path):
    for source, name in [("canonical", "canonical_example.jsonl"), ("chitchat", "chitchat_example.json"),
                         ("esconv", "esconv_original_example.json"), ("openai", "openai_example.jsonl")]:
        first = ingest(source=source, path=str(FIXTURES / name), max_sessions=3, seed=1)
        second = ingest(source=source, path=str(FIXTURES / name), max_sessions=3, seed=1)
        for a, b in zip(first.files(), second.files(), strict=True):
            assert a != b and a.read_bytes() == b.read_bytes(), (source, a.name)


def test_quarantine_output_is_byte_identical_too(ingest, tmp_path):
    path = write_jsonl(tmp_path / "logs.jsonl", [session_line("s-1"), "{bad", b"\xff\xfe", session_line("s-1")])
    first = ingest(source="canonical", path=str(path), on_bad_rows="quarantine")
    second = ingest(source="canonical", path=str(path), on_bad_rows="quarantine")
    assert len(first.quarantine) == 3
    assert first.quarantine_path.read_bytes() == second.quarantine_path.read_bytes()
    assert first.report_path.read_bytes() == second.report_path.read_bytes()
