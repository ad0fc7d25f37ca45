"""Per-message rewards r_t = logit(p_t) − logit(p_{t−1}) (p_0 = end of the context) and the
critical points of each session, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dial.errors import DialError
from dial.rewards import CRITICAL_COLUMNS, REWARD_COLUMNS, critical_points, message_rewards


def scores(rows):
    """rows: (session_id, user_turn_number, turn_index, logit, logit_0)."""
    return pd.DataFrame(rows, columns=["session_id", "user_turn_number", "turn_index", "logit", "logit_0"])


def test_rewards_are_log_odds_differences_with_p0_at_the_context_end():
    frame = scores([("s", 3, 4, -0.5, 0.2), ("s", 1, 0, 0.0, 0.2), ("s", 2, 2, 1.0, 0.2), ("t", 1, 1, 2.5, -1.0)])
    rewards = message_rewards(frame)
    assert list(rewards.columns) == REWARD_COLUMNS
    s = rewards[rewards["session_id"] == "s"]
    assert list(s["turn_index"]) == [0, 2, 4]
    np.testing.assert_allclose(s["reward"], [-0.2, 1.0, -1.5])
    np.testing.assert_allclose(s["logit_prev"], [0.2, 0.0, 1.0])
    assert rewards.loc[rewards["session_id"] == "t", "reward"].item() == pytest.approx(3.5)


def test_rewards_never_saturate_through_probabilities():
    # p = sigmoid(40) and sigmoid(45) are both 1.0 in float64; their log-odds still differ by 5.
    rewards = message_rewards(scores([("s", 1, 0, 40.0, 38.0), ("s", 2, 2, 45.0, 38.0), ("s", 3, 4, -60.0, 38.0)]))
    np.testing.assert_allclose(rewards["reward"], [2.0, 5.0, -105.0])


def test_unscored_messages_get_no_reward_and_gaps_are_errors():
    rewards = message_rewards(scores([("s", 1, 0, 0.5, 0.0), ("s", 2, 2, math.nan, 0.0)]))
    assert rewards["reward"].iloc[0] == pytest.approx(0.5) and math.isnan(rewards["reward"].iloc[1])
    assert math.isnan(message_rewards(scores([("s", 1, 0, 0.5, math.nan)]))["reward"].iloc[0])
    with pytest.raises(DialError, match="user_turn_number"):
        message_rewards(scores([("s", 1, 0, 0.5, 0.0), ("s", 3, 4, 0.1, 0.0)]))
    with pytest.raises(DialError, match="lack"):
        message_rewards(pd.DataFrame({"session_id": ["s"]}))
    assert message_rewards(scores([])).empty


def rewards_frame(rows):
    """rows: (session_id, turn_index, reward)."""
    frame = pd.DataFrame(rows, columns=["session_id", "turn_index", "reward"])
    frame["user_turn_number"] = frame.groupby("session_id").cumcount() + 1
    return frame


def test_critical_points_are_the_extreme_distinct_messages_of_each_session():
    rewards = rewards_frame([
        ("a", 0, 0.3), ("a", 2, -1.2), ("a", 4, 2.0), ("a", 6, -0.1), ("a", 8, 0.9),
        ("b", 0, 0.4),  # one user message: one point
        ("c", 0, 1.0), ("c", 2, math.nan), ("c", 4, -2.0),  # unscored messages are never picked
        ("d", 0, math.nan),  # nothing scored: no point
    ])
    one = critical_points(rewards, 1)
    assert list(one.columns) == CRITICAL_COLUMNS
    got = {(r.session_id, r.kind): (r.turn_index, r.rank) for r in one.itertuples()}
    assert got == {("a", "highest"): (4, 1), ("a", "lowest"): (2, 1), ("b", "highest"): (0, 1),
                   ("c", "highest"): (0, 1), ("c", "lowest"): (4, 1)}

    two = critical_points(rewards, 2)
    a = two[two["session_id"] == "a"]
    assert list(a.loc[a["kind"] == "highest", "turn_index"]) == [4, 8]
    assert list(a.loc[a["kind"] == "lowest", "turn_index"]) == [2, 6]
    assert list(a["rank"]) == [1, 2, 1, 2]
    c = two[two["session_id"] == "c"]
    assert list(zip(c["kind"], c["turn_index"])) == [("highest", 0), ("highest", 4)]  # 2 scored: both highest
    assert two["session_id"].value_counts().to_dict() == {"a": 4, "c": 2, "b": 1}
    assert not two.duplicated(["session_id", "turn_index"]).any()

    three = critical_points(rewards_frame([("e", 0, 0.1), ("e", 2, 0.5), ("e", 4, -0.3)]), 2)
    assert list(zip(three["kind"], three["turn_index"])) == [("highest", 2), ("highest", 0), ("lowest", 4)]


def test_critical_point_ties_prefer_the_earlier_message_and_bad_n_is_an_error():
    tied = critical_points(rewards_frame([("s", 0, 1.0), ("s", 2, 1.0), ("s", 4, 1.0)]), 1)
    assert list(zip(tied["kind"], tied["turn_index"])) == [("highest", 0), ("lowest", 2)]
    assert critical_points(rewards_frame([]), 1).empty
    with pytest.raises(DialError):
        critical_points(rewards_frame([("s", 0, 1.0)]), 0)
