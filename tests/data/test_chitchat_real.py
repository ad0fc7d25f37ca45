"""chitchat on the real installed `chitchat-dataset` package, checked against its raw dataset.json."""

import json

import pytest
from ingest_helpers import ingest_into

from dial.data.chitchat import dataset_path
from dial.errors import InputError

MAX_SESSIONS = 60


@pytest.fixture(scope="module")
def raw():
    return json.loads(dataset_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    # The packaged dataset holds conversations with empty messages, so quarantine mode here.
    return ingest_into(
        tmp_path_factory.mktemp("chitchat"), source="chitchat", max_sessions=MAX_SESSIONS, on_bad_rows="quarantine"
    )


def test_books_balance_and_sample_size(sample, raw):
    report = sample.report
    assert report["rows_in"] == len(raw) == report["rows_out"] + report["rows_quarantined"]
    assert report["rows_quarantined"] == len(sample.quarantine) > 0
    assert set(report["quarantine_reasons"]) == {"empty_text"}
    assert 0 < report["sessions_sampled"] == len(sample.sessions) <= MAX_SESSIONS
    assert report["messages"] == len(sample.messages) == report["user_messages"] + report["assistant_messages"]
    assert report["path"].endswith("chitchat_dataset/dataset.json")


def test_first_sender_is_user_and_bursts_stay_separate(sample, raw):
    n_bursty = 0
    for session_id, messages in sample.messages.sort_values(["session_id", "turn_index"]).groupby("session_id"):
        conversation = raw[session_id]
        flat = [message for burst in conversation["messages"] for message in burst]
        first = flat[0]["sender"]
        assert sample.sessions.set_index("session_id").loc[session_id, "user_id"] == first
        assert messages["text"].tolist() == [m["text"] for m in flat]
        assert messages["role"].tolist() == ["user" if m["sender"] == first else "assistant" for m in flat]
        assert messages["timestamp"].tolist() == [m["timestamp"] for m in flat]
        n_bursty += len(flat) > len(conversation["messages"])
    assert n_bursty > 0  # some conversations really contain multi-message bursts


def test_multi_session_users_are_ordered_by_time(sample, raw):
    multi = sample.users[sample.users["n_sessions"] > 1]["user_id"]
    assert len(multi) > 0
    for user_id in multi:
        sessions = sample.sessions[sample.sessions["user_id"] == user_id].sort_values("session_index")
        assert sessions["session_index"].tolist() == list(range(len(sessions)))
        assert sessions["started_at"].tolist() == sorted(sessions["started_at"])
        assert sessions["started_at"].tolist() == [raw[s]["start"] for s in sessions["session_id"]]
        # Whole users: every valid conversation this sender opened is in the sample.
        opened = {
            conversation_id
            for conversation_id, conversation in raw.items()
            if conversation["messages"][0][0]["sender"] == user_id
        } - set(sample.quarantine["raw"].map(lambda text: next(iter(json.loads(text)))))
        assert set(sessions["session_id"]) == opened


def test_prompt_is_topic_and_ratings_are_metadata(sample, raw):
    for row in sample.sessions.itertuples(index=False):
        conversation = raw[row.session_id]
        metadata = json.loads(row.metadata)
        assert (row.topic if isinstance(row.topic, str) else None) == conversation.get("prompt")
        assert metadata.get("ratings") == conversation.get("ratings")


def test_fail_mode_names_the_bad_conversations(tmp_path):
    with pytest.raises(InputError) as error:
        ingest_into(tmp_path, source="chitchat", max_sessions=MAX_SESSIONS)
    text = str(error.value)
    assert "dataset.json:574: conversation '56579611-7838-496d-829f-3bb334e1909d': field 'messages[17][0].text': empty text" in text
    assert "... and " in text and "data.on_bad_rows: quarantine" in text
