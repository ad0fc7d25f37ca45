"""`dial evaluate-chatbot`'s per-chatbot summary and its A/B text, on hand-made judgements."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dial.evaluation.chatbot import chatbot_issue_summary, render_summary
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
