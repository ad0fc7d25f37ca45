"""`dial evaluate-chatbot`'s per-chatbot summary and its A/B text, on hand-made judgements."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dial.evaluation.chatbot import chatbot_issue_summary, render_summary, simulated_session_errors
from dial.evaluation.stats import two_proportion_z_test


def frames():
    sessions = pd.DataFrame({"session_id": ["a1", "a2", "b1"], "chatbot_id": ["ctrl", "ctrl", "treat"]})
    rows = []
    for session_id, n_pairs in (("a1", 2), ("a2", 1), ("b1", 3)):
        for t in range(n_pairs):
            rows += [(session_id, 2 * t, "user", "hi"), (session_id, 2 * t + 1, "assistant", "hello")]
    messages = pd.DataFrame(rows, columns=["session_id", "turn_index", "role", "text"])
    item_sessions = {"x1": "a1", "x2": "a2", "x3": "b1"}
    issues = pd.DataFrame(
        [
            ("x1", 1, "App Bugs", "Duplicate chatbot messages", "", "rules"),
            ("x1", 1, "User Confusion", "Unclear", "", "rules"),  # same message twice: counted once in the rate
            ("x1", 0, "User Confusion", "Unclear", "", "rules"),  # on a user message: not a chatbot issue
            ("x3", 1, "App Bugs", "Duplicate chatbot messages", "", "rules"),
            ("x3", 3, "App Bugs", "Duplicate chatbot messages", "", "rules"),
        ],
        columns=["item_id", "turn_index", "group", "category", "evidence", "judge"],
    )
    return sessions, messages, issues, item_sessions


def test_issue_rate_per_chatbot():
    sessions, messages, issues, item_sessions = frames()
    summary = chatbot_issue_summary(messages, sessions, issues, item_sessions)
    assert summary["ctrl"]["k"] == 1 and summary["ctrl"]["n"] == 3 and summary["ctrl"]["sessions"] == 2
    assert summary["ctrl"]["rate"] == pytest.approx(1 / 3)
    assert summary["ctrl"]["se"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 3))
    assert summary["ctrl"]["categories"] == {"Duplicate chatbot messages": 1, "Unclear": 1}
    assert summary["treat"]["k"] == 2 and summary["treat"]["n"] == 3
    assert summary["treat"]["categories"] == {"Duplicate chatbot messages": 2}


def test_render_with_ab_test():
    sessions, messages, issues, item_sessions = frames()
    per_chatbot = chatbot_issue_summary(messages, sessions, issues, item_sessions)
    ab = two_proportion_z_test(1, 3, 2, 3)
    text = render_summary({
        "simulator": "it3", "judge": "rules", "sessions": 3, "stop_reasons": {"max_turns": 3},
        "chatbots": per_chatbot, "ab_test": {"control": "ctrl", "treatment": "treat", **ab},
    })
    assert "ctrl" in text and "33.33%" in text and "66.67%" in text
    assert f"z = {ab['z']:.2f}" in text and "+33.33 pp" in text


def test_issue_rate_without_the_sessions_the_simulator_broke():
    sessions, messages, issues, item_sessions = frames()
    summary = chatbot_issue_summary(messages, sessions, issues, item_sessions, broken_sessions={"a1"}, n_resamples=200)
    ctrl = summary["ctrl"]
    # a1 (2 chatbot messages, 1 flagged) is left out: a2's 1 message, none flagged.
    assert ctrl["without_simulator_errors"]["k"] == 0 and ctrl["without_simulator_errors"]["n"] == 1
    assert ctrl["without_simulator_errors"]["rate"] == 0.0
    assert (ctrl["without_simulator_errors"]["sessions"], ctrl["without_simulator_errors"]["sessions_excluded"]) == (1, 1)
    assert ctrl["rate"] == pytest.approx(1 / 3) and ctrl["rate_ci_low"] <= ctrl["rate"] <= ctrl["rate_ci_high"]
    treat = summary["treat"]  # nothing broken: the same rate and interval
    assert treat["without_simulator_errors"]["rate"] == treat["rate"]
    assert treat["without_simulator_errors"]["rate_ci_low"] == treat["rate_ci_low"]


def test_render_shows_the_simulator_errors_and_the_rate_without_them():
    sessions, messages, issues, item_sessions = frames()
    per_chatbot = chatbot_issue_summary(messages, sessions, issues, item_sessions, broken_sessions={"a1"}, n_resamples=200)
    errors = {"rate": 0.25, "rate_ci_low": 0.1, "rate_ci_high": 0.5, "k": 2, "n": 8, "session_rate": 1 / 3,
              "session_rate_ci_low": 0.06, "session_rate_ci_high": 0.79, "sessions_flagged": 1, "n_sessions": 3,
              "messages_by_flag": {"role_break": 2, "verbatim_context": 0, "contradicts_profile": 0},
              "sessions_by_flag": {"ended_mid_task": 0}}
    text = render_summary({"simulator": "it2", "judge": "rules", "sessions": 3, "stop_reasons": {"max_turns": 3},
                           "simulator_errors": errors, "chatbots": per_chatbot})
    assert "simulator errors: 25.00% [10.00%, 50.00%] of 8 user messages (2)" in text
    assert "33.33% [6.00%, 79.00%] of 3 sessions (1)" in text and "role break 2" in text
    ctrl_line = next(line for line in text.splitlines() if line.startswith("ctrl "))
    assert "0.00% [0.00%, 0.00%] (n 1, 1 sessions)" in ctrl_line


def test_simulated_sessions_are_read_against_the_context_that_grounded_them():
    sessions = pd.DataFrame({"session_id": ["s1", "s2"], "chatbot_id": ["ctrl", "ctrl"]})
    messages = pd.DataFrame(
        [("s1", 0, "user", "i keep fighting with my sister about the family dinner plans"), ("s1", 1, "assistant", "Why?"),
         ("s2", 0, "user", "hello"), ("s2", 1, "assistant", "What is on your mind?")],
        columns=["session_id", "turn_index", "role", "text"],
    )
    simulations = pd.DataFrame({"session_id": ["s1", "s2"], "real_session_id": ["r1", "r2"], "stop_reason": ["max_turns", "user_ended"]})
    contexts = pd.DataFrame({"session_id": ["r1", "r2"], "profile": ["", ""],
                             "context_text": ["fighting with my sister about the family dinner plans this week", "work stress"]})
    frame = simulated_session_errors(sessions, messages, simulations, contexts).set_index("session_id")
    assert frame.loc["s1", "verbatim_context"] == 1 and not frame.loc["s1", "ended_mid_task"]
    assert frame.loc["s2", "verbatim_context"] == 0 and frame.loc["s2", "ended_mid_task"]  # ended in its first turn


def test_goal_alignment_of_the_simulated_users_overall_and_per_chatbot():
    from dial.evaluation.chatbot import chatbot_goal_summary
    from dial.evaluation.goals import RulesGoalTracker

    sessions = pd.DataFrame({"session_id": ["s1", "s2", "s3"], "chatbot_id": ["ctrl", "ctrl", "treat"]})
    said = {"s1": "i lost my job and my landlord wants rent", "s2": "hello there", "s3": "lost the job, landlord wants the rent"}
    messages = pd.DataFrame(
        [(sid, t, role, text) for sid, line in said.items() for t, role, text in ((0, "user", line), (1, "assistant", "I see"))],
        columns=["session_id", "turn_index", "role", "text"],
    )
    simulations = pd.DataFrame({"session_id": ["s1", "s2", "s3"], "real_session_id": ["r1", "r1", "r1"]})
    contexts = pd.DataFrame({"session_id": ["r1"], "profile": [""], "current_summary": [
        "The user's situation, in their own words before the chat: lost my job and my landlord wants rent"]})
    summary, states = chatbot_goal_summary(sessions, messages, simulations, contexts, RulesGoalTracker(), 200, 0, "sft")
    assert summary["tracker"] == "rules" and summary["n_sessions"] == 3
    assert summary["rate"] == pytest.approx(2 / 3)  # s1 and s3 raise every cue of the one objective, s2 none
    assert summary["per_chatbot"]["ctrl"]["rate"] == pytest.approx(0.5) and summary["per_chatbot"]["ctrl"]["n_sessions"] == 2
    assert summary["per_chatbot"]["treat"]["rate"] == 1.0 and summary["per_chatbot"]["treat"]["n_sessions"] == 1
    assert summary["rate_ci_low"] <= summary["rate"] <= summary["rate_ci_high"]
    assert set(states["session_id"]) == {"s1", "s2", "s3"}
    text = render_summary({"simulator": "sft", "judge": "rules", "sessions": 3, "stop_reasons": {"max_turns": 3}, "chatbots": {},
                           "goals": summary})
    line = next(line for line in text.splitlines() if line.startswith("goal alignment"))
    assert "(UGST, rules tracker): 66.67% [" in line and "3 sessions (0 without a goal)" in line
    assert "per chatbot: ctrl 50.00% [" in line and "treat 100.00%" in line


def test_no_issue_at_all_gives_zero_rates_not_an_error():
    sessions, messages, issues, item_sessions = frames()
    summary = chatbot_issue_summary(messages, sessions, issues.iloc[0:0], item_sessions, n_resamples=50)
    assert summary["ctrl"]["k"] == 0 and summary["ctrl"]["rate"] == 0.0 and summary["treat"]["categories"] == {}
