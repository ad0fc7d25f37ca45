"""Every source adapter on small hand-written fixtures (and ESConv on the shared copy if present)."""

import json
import shutil

import pytest
import pandas as pd
from ingest_helpers import FIXTURES, SHARED_ESCONV, ingest_into, session_line, write_jsonl

from dial.errors import InputError


def by_session(ingested):
    return {
        session_id: list(zip(group["role"], group["text"]))
        for session_id, group in ingested.messages.sort_values(["session_id", "turn_index"]).groupby("session_id")
    }


def meta(frame, key_column, key, column="metadata"):
    return json.loads(frame.set_index(key_column).loc[key, column])


# --- canonical ---------------------------------------------------------------------------------


def test_canonical_example_file(ingest):
    got = ingest(source="canonical", path=str(FIXTURES / "canonical_example.jsonl"))
    sessions = got.sessions.set_index("session_id")
    assert sorted(sessions.index) == ["s-001", "s-002", "s-003", "s-004"]
    assert set(got.sessions["source"]) == {"canonical"}
    # alice's sessions ordered by started_at, not by file order (s-003 is older than s-001).
    assert sessions.loc["s-003", "session_index"] == 0 and sessions.loc["s-001", "session_index"] == 1
    assert sessions.loc["s-002", "started_at"] == "2024-05-02T12:00:00Z"  # +02:00 normalised to UTC
    assert sessions.loc["s-001", "chatbot_id"] == "helpdesk-v2" and sessions.loc["s-001", "topic"] == "late delivery"
    assert json.loads(sessions.loc["s-001", "metadata"]) == {"channel": "web", "csat": 4}
    assert json.loads(sessions.loc["s-004", "metadata"]) == {} and pd.isna(sessions.loc["s-004", "started_at"])
    assert by_session(got)["s-001"] == [
        ("user", "hi, my order still hasn't arrived"),
        ("user", "it's been 10 days"),
        ("assistant", "Sorry about that! Could you share the order number?"),
        ("user", "sure, it's 5521"),
    ]
    message = got.messages[(got.messages["session_id"] == "s-001") & (got.messages["turn_index"] == 2)].iloc[0]
    assert json.loads(message["metadata"]) == {"latency_ms": 840, "model": "helpdesk-v2"}
    assert message["timestamp"] == "2024-05-01T09:30:12Z"
    # user_profile merged in session order: the later session (s-001) overrides "plan".
    assert meta(got.users, "user_id", "u-alice", "profile") == {"language": "en", "plan": "pro"}
    assert got.users.set_index("user_id")["n_sessions"].to_dict() == {"u-alice": 2, "u-bob": 1, "u-carol": 1}
    assert got.report["rows_in"] == 4 and got.report["rows_quarantined"] == 0 and len(got.quarantine) == 0
    assert got.quarantine_path.exists()  # always written (a DVC out), here empty


def test_canonical_sessions_without_started_at_keep_file_order(ingest, tmp_path):
    path = write_jsonl(
        tmp_path / "logs.jsonl",
        [session_line(f"z-{i}", "u-1", started_at=None) for i in range(3)]
        + [session_line("a-dated", "u-1", started_at="2030-01-01T00:00:00Z")],
    )
    got = ingest(source="canonical", path=str(path))
    order = got.sessions.sort_values("session_index")["session_id"].tolist()
    assert order == ["a-dated", "z-0", "z-1", "z-2"]  # dated first, undated in input order


def test_canonical_directory_reads_every_jsonl(ingest, tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [session_line("s-b", "u-b")])
    write_jsonl(tmp_path / "a.jsonl", [session_line("s-a", "u-a")])
    (tmp_path / "notes.txt").write_text("not a log")
    got = ingest(source="canonical", path=str(tmp_path))
    assert sorted(got.sessions["session_id"]) == ["s-a", "s-b"]
    assert [name.rsplit("/", 1)[-1] for name in got.report["input_files"]] == ["a.jsonl", "b.jsonl"]


def test_missing_path_and_empty_directory_are_clear_errors(ingest, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: data.path not found"):
        ingest(source="canonical", path=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no input files matching \*\.jsonl"):
        ingest(source="canonical", path=str(tmp_path / "empty"))


# --- openai -------------------------------------------------------------------------------------


def test_openai_example_file(ingest):
    got = ingest(source="openai", path=str(FIXTURES / "openai_example.jsonl"))
    sessions = got.sessions.set_index("session_id")
    assert sorted(sessions.index) == ["chat-42", "chat-43", "openai_example.jsonl:1"]
    # No ids: session id from file name + line, one user per session.
    assert sessions.loc["openai_example.jsonl:1", "user_id"] == "openai_example.jsonl:1"
    # The system prompt is not a turn but session metadata; "developer" counts as system.
    assert json.loads(sessions.loc["openai_example.jsonl:1", "metadata"]) == {
        "system_prompt": "You are a friendly cooking assistant."
    }
    assert json.loads(sessions.loc["chat-43", "metadata"]) == {"system_prompt": "Answer briefly.", "tools": []}
    assert by_session(got)["openai_example.jsonl:1"][0] == ("user", "what can I make with eggs and spinach?")
    assert set(got.messages["role"]) == {"user", "assistant"}
    # Content parts joined; extra message keys kept as metadata; timestamp accepted for started_at.
    assert by_session(got)["chat-42"][0] == ("user", "is pasta water\nsupposed to be salty?")
    assert sessions.loc["chat-43", "started_at"] == "2024-02-01T10:00:00Z"
    assert [sessions.loc["chat-43", "session_index"], sessions.loc["chat-42", "session_index"]] == [0, 1]
    assert sessions.loc["chat-42", "chatbot_id"] == "cook-bot"
    assert json.loads(sessions.loc["chat-42", "metadata"]) == {"rating": 5}
    reply = got.messages[(got.messages["session_id"] == "chat-42") & (got.messages["role"] == "assistant")].iloc[0]
    assert json.loads(reply["metadata"]) == {"name": "cook-bot"}


# --- chitchat (format fixture; the real package is in test_chitchat_real.py) --------------------


def test_chitchat_format_fixture(ingest):
    got = ingest(source="chitchat", path=str(FIXTURES / "chitchat_example.json"))
    sessions = got.sessions.set_index("session_id")
    # First sender is the user: sender-a opens two conversations, sender-b one (where a answers).
    assert sessions["user_id"].to_dict() == {
        "conv-early": "sender-a",
        "conv-late": "sender-a",
        "conv-b-first": "sender-b",
        "conv-unanswered": "sender-d",
    }
    # Ordered by time, although conv-late comes first in the file.
    assert sessions.loc["conv-early", "session_index"] == 0 and sessions.loc["conv-late", "session_index"] == 1
    # Bursts: each message its own turn, consecutive same-role turns kept.
    assert by_session(got)["conv-early"] == [
        ("user", "hi"),
        ("assistant", "hello there"),
        ("assistant", "how are you"),
        ("assistant", "doing well?"),
        ("user", "great thanks"),
    ]
    assert sessions.loc["conv-late", "topic"] == "What did you do last weekend?"
    assert pd.isna(sessions.loc["conv-unanswered", "topic"])
    assert json.loads(sessions.loc["conv-late", "metadata"]) == {
        "assistant_sender": "sender-b",
        "ratings": {"interesting": 5, "upbeat": 4, "witty": 3},
    }
    assert sessions.loc["conv-late", "started_at"] == "2018-05-10T16:00:00Z"
    assert got.report["sessions_without_assistant_message"] == 1
    assert got.report["users_with_multiple_sessions"] == 1


# --- esconv -------------------------------------------------------------------------------------


def test_esconv_original_single_file_format(ingest):
    got = ingest(source="esconv", path=str(FIXTURES / "esconv_original_example.json"))
    sessions = got.sessions.set_index("session_id")
    assert sorted(sessions.index) == ["esconv-1", "esconv-2"]
    assert (sessions["user_id"] == sessions.index).all()  # each conversation its own user
    assert sessions.loc["esconv-1", "topic"].startswith("My team is being reorganised")
    metadata = json.loads(sessions.loc["esconv-1", "metadata"])
    assert metadata["survey_score"]["seeker"]["empathy"] == "5"
    assert metadata["experience_type"] == "Current Experience"
    assert metadata["seeker_question1"] == "The listener was patient."
    assert "original_split" not in metadata
    assert meta(got.users, "user_id", "esconv-1", "profile") == {
        "emotion_type": "anxiety",
        "experience_type": "Current Experience",
        "initial_emotion_intensity": "4",
        "problem_type": "job crisis",
    }
    messages = got.messages[got.messages["session_id"] == "esconv-1"].sort_values("turn_index")
    assert messages["role"].tolist() == ["user", "assistant", "user", "user", "assistant", "user"]
    assert [json.loads(m) for m in messages["metadata"]] == [
        {},
        {"strategy": "Question"},
        {},
        {},
        {"strategy": "Reflection of feelings"},
        {"feedback": "5"},
    ]


def test_esconv_split_format_fixture_directory(ingest, tmp_path):
    shutil.copy(FIXTURES / "esconv_split_example.jsonl", tmp_path / "valid.jsonl")
    shutil.copy(FIXTURES / "esconv_split_example.jsonl", tmp_path / "train.jsonl")
    got = ingest(source="esconv", path=str(tmp_path))
    assert sorted(got.sessions["session_id"]) == ["esconv-train-1", "esconv-train-2", "esconv-valid-1", "esconv-valid-2"]
    assert meta(got.sessions, "session_id", "esconv-valid-2")["original_split"] == "valid"
    assert meta(got.users, "user_id", "esconv-train-1", "profile")["emotion_type"] == "fear"
    first = got.messages[got.messages["session_id"] == "esconv-train-1"].sort_values("turn_index")
    assert first["role"].tolist() == ["user", "assistant", "user", "assistant", "assistant"]
    assert json.loads(first["metadata"].iloc[4]) == {"strategy": "Providing Suggestions"}


def test_esconv_needs_a_path(ingest):
    with pytest.raises(FileNotFoundError, match="data.path is empty"):
        ingest(source="esconv", path="")


@pytest.fixture(scope="module")
def shared_esconv(tmp_path_factory):
    if not SHARED_ESCONV.is_dir():
        pytest.skip(f"ESConv not available at {SHARED_ESCONV} (CC BY-NC data, kept outside the repo)")
    return ingest_into(tmp_path_factory.mktemp("esconv"), source="esconv", path=str(SHARED_ESCONV))


def test_esconv_split_files_from_shared(shared_esconv):
    raw = {}
    for path in sorted(SHARED_ESCONV.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            raw[f"esconv-{path.stem}-{number}"] = json.loads(line)
    got = shared_esconv
    assert got.report["rows_in"] == len(raw) == got.report["rows_out"] and got.report["rows_quarantined"] == 0
    assert set(got.sessions["session_id"]) == set(raw)
    splits = got.sessions["metadata"].map(lambda m: json.loads(m)["original_split"]).value_counts().to_dict()
    assert splits == {split: sum(1 for key in raw if key.startswith(f"esconv-{split}-")) for split in splits}
    assert set(splits) == {"train", "valid", "test"}
    assert (got.users["n_sessions"] == 1).all() and len(got.users) == len(raw)
    n_usr = sum(1 for conv in raw.values() for m in conv["dialog"] if m["speaker"] == "usr")
    assert got.report["user_messages"] == n_usr
    assert got.report["messages"] == sum(len(conv["dialog"]) for conv in raw.values())

    session_id = "esconv-train-1"
    conversation = raw[session_id]
    messages = got.messages[got.messages["session_id"] == session_id].sort_values("turn_index")
    assert messages["text"].tolist() == [m["text"] for m in conversation["dialog"]]
    assert messages["role"].tolist() == [{"usr": "user", "sys": "assistant"}[m["speaker"]] for m in conversation["dialog"]]
    strategies = [json.loads(m).get("strategy") for m in messages["metadata"]]
    assert strategies == [m.get("strategy") for m in conversation["dialog"]]
    session = got.sessions.set_index("session_id").loc[session_id]
    assert session["topic"] == conversation["situation"]
    assert json.loads(session["metadata"])["survey_score"] == conversation["survey_score"]
    profile = meta(got.users, "user_id", session_id, "profile")
    assert profile["emotion_type"] == conversation["emotion_type"]
    assert profile["initial_emotion_intensity"] == conversation["survey_score"]["seeker"]["initial_emotion_intensity"]


def test_esconv_single_split_file_from_shared(ingest):
    if not SHARED_ESCONV.is_dir():
        pytest.skip(f"ESConv not available at {SHARED_ESCONV} (CC BY-NC data, kept outside the repo)")
    got = ingest(source="esconv", path=str(SHARED_ESCONV / "test.jsonl"), max_sessions=20, seed=1)
    assert got.report["sessions_sampled"] == 20 and got.report["rows_in"] > 20
    assert got.sessions["session_id"].str.match(r"^esconv-test-\d+$").all()
