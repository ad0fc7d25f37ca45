"""Each DuckDB invariant catches what it names (and passes on clean data)."""

import pandas as pd
import pytest

from dial.checks import CHECKS, CheckError, assert_checks, connect, run_checks


def clean_views():
    sessions = pd.DataFrame({"session_id": ["s1", "s2"], "user_id": ["a", "b"]})
    messages = pd.DataFrame({
        "session_id": ["s1", "s1", "s2"], "turn_index": [0, 1, 0],
        "role": ["user", "assistant", "user"], "text": ["hi <PERSON_1>", "call me in 2018, I'm 25", "ok"],
    })
    users = pd.DataFrame({"user_id": ["a", "b"]})
    splits = pd.DataFrame({"user_id": ["a", "b"], "split": ["train", "test"]})
    contexts = pd.DataFrame({"session_id": ["s1", "s2"], "n_tokens": [10, 20]})
    samples = pd.DataFrame({"sample_id": ["s1:0000", "s2:0000"], "session_id": ["s1", "s2"], "user_id": ["a", "b"],
                            "split": ["train", "test"], "n_prompt_tokens": [30, 40], "n_completion_tokens": [2, 3]})
    return {"sessions": sessions, "messages": messages, "users": users, "splits": splits,
            "contexts": contexts, "sft_samples": samples}


LIMITS = {"max_context_tokens": 100, "max_sample_tokens": 100}


def test_all_checks_pass_on_clean_data():
    results = run_checks(connect(clean_views()), limits=LIMITS)
    assert len(results) == len(CHECKS)
    assert all(result.passed for result in results), [r.check.name for r in results if not r.passed]


def corrupt(views, name):
    if name == "message_session_exists":
        views["messages"].loc[2, "session_id"] = "ghost"
    elif name == "session_has_user_message":
        views["messages"].loc[2, "role"] = "assistant"
    elif name == "turns_contiguous":
        views["messages"].loc[1, "turn_index"] = 5
    elif name == "roles_valid":
        views["messages"].loc[1, "role"] = "bot"
    elif name == "text_not_empty":
        views["messages"].loc[1, "text"] = "   "
    elif name == "session_user_exists":
        views["sessions"].loc[1, "user_id"] = "nobody"
    elif name == "no_pii_pattern":
        views["messages"].loc[1, "text"] = "mail jo.doe@example.org or call (555) 123-4567"
    elif name == "splits_cover_users":
        views["splits"] = views["splits"].iloc[:1]
    elif name == "splits_disjoint":
        views["splits"] = pd.concat([views["splits"], pd.DataFrame({"user_id": ["a"], "split": ["valid"]})])
    elif name == "contexts_cover_sessions":
        views["contexts"] = views["contexts"].iloc[:1]
    elif name == "contexts_within_budget":
        views["contexts"].loc[0, "n_tokens"] = 101
    elif name == "samples_within_budget":
        views["sft_samples"].loc[0, "n_prompt_tokens"] = 99
    elif name == "samples_split_matches_user":
        views["sft_samples"].loc[0, "split"] = "valid"
    elif name == "samples_sessions_exist":
        views["sft_samples"].loc[0, "session_id"] = "ghost"
    else:
        raise AssertionError(f"no corruption for {name}")
    return views


@pytest.mark.parametrize("name", [check.name for check in CHECKS])
def test_each_check_catches_its_violation(name):
    views = corrupt(clean_views(), name)
    failed = {r.check.name for r in run_checks(connect(views), limits=LIMITS) if not r.passed}
    assert name in failed
    with pytest.raises(CheckError, match=name):
        assert_checks(views, [name], limits=LIMITS, where="test")


def test_parquet_views(tmp_path):
    path = tmp_path / "users.parquet"
    pd.DataFrame({"user_id": ["a", "o'neil"]}).to_parquet(path)
    con = connect({"users": path})
    assert con.execute("SELECT count(*) FROM users").fetchone()[0] == 2
