"""Session structure, real vs simulated: counts per session, ratios clustered by session, the
ended share's Wilson interval, and the report's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from dial.evaluation import report, structure
from dial.evaluation.evaluate import evaluate

from eval_helpers import messages_frame as frame
from test_report import synthetic


def test_per_session_counts_turns_bursts_messages_and_words():
    messages = frame([
        ("a", "assistant", "welcome"), ("a", "user", "hi"), ("a", "user", "you there?"), ("a", "assistant", "yes"),
        ("a", "user", "ok bye now"),
        ("b", "user", "one two three"), ("b", "assistant", "sure"), ("b", "user", "<|reply|> fine"), ("b", "user", "a | b <3"),
    ])
    rows = structure.per_session(messages, {"a": True, "quiet": True}, ["a", "b", "quiet"]).set_index("session_id")
    assert rows.loc["a"].to_dict() == {"user_turns": 2, "burst_turns": 1, "user_messages": 3, "user_words": 6, "tagged_messages": 0,
                                       "ended": True}
    assert rows.loc["b"].to_dict() == {"user_turns": 2, "burst_turns": 1, "user_messages": 3, "user_words": 9,
                                       "tagged_messages": 1, "ended": False}
    # A simulated user who ended the session before writing anything: a row of zeros, not left out.
    assert rows.loc["quiet"].to_dict() == {"user_turns": 0, "burst_turns": 0, "user_messages": 0, "user_words": 0,
                                           "tagged_messages": 0, "ended": True}


def test_summary_ratios_are_pooled_over_sessions_and_the_ended_share_has_a_wilson_interval():
    rows = pd.DataFrame({
        "session_id": [f"s{i}" for i in range(10)],
        "user_turns": [5, 4, 5, 3, 5, 5, 2, 5, 4, 5],
        "burst_turns": [1, 0, 2, 0, 1, 0, 0, 3, 1, 0],
        "user_messages": [6, 4, 7, 3, 6, 5, 2, 9, 5, 5],
        "user_words": [60, 20, 70, 9, 80, 40, 10, 90, 25, 30],
        "tagged_messages": [0, 1, 0, 0, 2, 0, 0, 0, 0, 0],
        "ended": [False, True, False, True, False, False, True, False, True, False],
    })
    summary = structure.summarise(rows, n_resamples=2000, seed=0, label="real")
    assert summary["messages_per_user_turn"] == 52 / 43 and summary["burst_turn_share"] == 8 / 43
    assert summary["words_per_user_message"] == 434 / 52 and summary["user_turns_per_session"] == 4.3
    assert summary["tagged_message_share"] == 3 / 52
    for name in ("messages_per_user_turn", "burst_turn_share", "words_per_user_message", "tagged_message_share",
                 "user_turns_per_session"):
        assert summary[f"{name}_ci_low"] < summary[name] < summary[f"{name}_ci_high"], name
    low, high = binomtest(4, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert summary["user_ended"] == 4 and summary["user_ended_share"] == 0.4
    assert np.isclose(summary["user_ended_share_ci_low"], low) and np.isclose(summary["user_ended_share_ci_high"], high)
    assert structure.summarise(rows, n_resamples=2000, seed=0, label="real") == summary  # seeded


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.integers(1, 5)), min_size=1, max_size=30))
def test_messages_per_turn_times_turns_is_messages(turns):
    messages = frame([("s", role, " ".join(["w"] * words)) for role, words in turns])
    (row,) = structure.per_session(messages, {}).to_dict("records")
    roles = [role for role, _ in turns]
    assert row["user_messages"] == roles.count("user") and row["user_words"] == sum(w for r, w in turns if r == "user")
    assert row["burst_turns"] <= row["user_turns"] <= row["user_messages"]
    assert row["user_turns"] == sum(1 for i, r in enumerate(roles) if r == "user" and (i == 0 or roles[i - 1] != "user"))


def test_real_sessions_count_as_ended_when_their_user_left_within_the_compared_turns():
    whole = frame([("short", "user", "hi"), ("short", "assistant", "hey"), ("short", "user", "bye"),
                   ("long", "user", "a"), ("long", "assistant", "b"), ("long", "user", "c"), ("long", "assistant", "d"),
                   ("long", "user", "e")])
    assert structure.real_ended(whole, 2) == {"long": False, "short": True}
    simulations = pd.DataFrame({"session_id": ["x", "y"], "stop_reason": ["user_ended", "max_turns"]})
    assert structure.simulated_ended(simulations) == {"x": True, "y": False}


def test_the_report_shows_real_and_each_simulator_with_intervals():
    inputs = synthetic()
    frames = {"real": structure.per_session(inputs["real_messages"], {"r0": True})}
    for name, (_, messages, _) in inputs["simulated"].items():
        frames[name] = structure.per_session(messages, {})
    metrics = evaluate(**inputs, structure=frames)
    flat = report.flat_metrics(metrics)
    assert flat["real.structure.user_ended"] == 1 and flat["real.structure.n_sessions"] == 6
    assert "sft.structure.messages_per_user_turn_ci_low" in flat
    markdown = report.render_markdown(metrics, {})
    table = markdown.split("## Session structure: real vs simulated")[1].split("##")[0]
    assert markdown.index("## Session structure") < markdown.index("## Did DIAL")
    for name in ("real", "zero-shot", "sft", "it1"):
        assert f"| {name} | " in table
    assert "| real | 6 | " in table and "1 — 16.7 [" in table
