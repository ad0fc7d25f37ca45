import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dial.params import SplitParams
from dial.split import split_report, split_users


def users_frame(n):
    return pd.DataFrame({"user_id": [f"user-{i}" for i in range(n)]})


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 10**6), valid=st.floats(0, 0.45), test=st.floats(0, 0.45))
def test_every_user_in_exactly_one_split_and_train_never_empty(n, seed, valid, test):
    splits = split_users(users_frame(n), SplitParams(seed=seed, valid_fraction=valid, test_fraction=test))
    assert sorted(splits["user_id"]) == sorted(users_frame(n)["user_id"])
    assert splits["user_id"].is_unique
    assert (splits["split"] == "train").sum() >= 1
    if n >= 3 and valid > 0:
        assert (splits["split"] == "valid").sum() >= 1


def test_deterministic_by_seed_and_stable_under_reordering():
    users = users_frame(50)
    first = split_users(users, SplitParams(seed=3)).set_index("user_id")["split"]
    again = split_users(users.iloc[::-1], SplitParams(seed=3)).set_index("user_id")["split"]
    other = split_users(users, SplitParams(seed=4)).set_index("user_id")["split"]
    assert first.sort_index().equals(again.sort_index())
    assert not first.sort_index().equals(other.sort_index())
    assert (first == "test").sum() == 5 and (first == "valid").sum() == 5


def test_fractions_must_leave_train():
    with pytest.raises(ValueError, match="train would be empty"):
        SplitParams(valid_fraction=0.5, test_fraction=0.5)


def test_report_counts_sessions_and_messages_per_split():
    splits = pd.DataFrame({"user_id": ["a", "b"], "split": ["train", "test"]})
    sessions = pd.DataFrame({"session_id": ["s1", "s2", "s3"], "user_id": ["a", "a", "b"]})
    messages = pd.DataFrame({"session_id": ["s1", "s1", "s2", "s3"], "role": ["user", "assistant", "user", "user"]})
    report = split_report(splits, sessions, messages)
    assert report["train"] == {"users": 1, "sessions": 2, "messages": 3, "user_messages": 2}
    assert report["test"] == {"users": 1, "sessions": 1, "messages": 1, "user_messages": 1}
    assert report["valid"]["users"] == 0
