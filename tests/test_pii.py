"""The scrub-PII stage: typed placeholders, per-session consistency, JSON fields, leak gate,
determinism, no network. One Analyzer per module (loading presidio + spaCy takes seconds)."""

import json
import re
import socket

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dial import io, paths
from dial.errors import LeakError
from dial.params import ParamsError, PiiParams
from dial.pii import (
    LEAK_EMAIL_PATTERN,
    LEAK_PHONE_PATTERN,
    Analyzer,
    Detection,
    leak_gate,
    resolve_overlaps,
    run_scrub,
    scrub_tables,
)

PLACEHOLDER = re.compile(r"<[A-Z_]+_\d+>")


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer(PiiParams())


def tables(sessions, messages, users=None):
    """Canonical tables from short specs: sessions {id: (user, index, topic, metadata)},
    messages {id: [texts]}, users {id: profile}."""
    session_rows = [
        {"session_id": sid, "user_id": user, "source": "test", "session_index": index, "started_at": None,
         "chatbot_id": None, "topic": topic, "metadata": json.dumps(metadata or {})}
        for sid, (user, index, topic, metadata) in sessions.items()
    ]
    message_rows = [
        {"session_id": sid, "turn_index": turn, "role": "user" if turn % 2 == 0 else "assistant", "text": text,
         "timestamp": None, "metadata": "{}"}
        for sid, texts in messages.items() for turn, text in enumerate(texts)
    ]
    users = users or {}
    user_ids = sorted({user for user, *_ in sessions.values()})
    user_rows = [
        {"user_id": user, "source": "test", "n_sessions": sum(1 for u, *_ in sessions.values() if u == user),
         "profile": json.dumps(users.get(user, {}))}
        for user in user_ids
    ]
    return pd.DataFrame(session_rows), pd.DataFrame(message_rows), pd.DataFrame(user_rows)


def scrub_messages(analyzer, *texts, session="s1"):
    result = scrub_tables(*tables({session: ("u1", 0, None, None)}, {session: list(texts)}), analyzer)
    return list(result.messages["text"]), result


@pytest.mark.parametrize(
    "entity, text, value",
    [
        ("PERSON", "My friend Jennifer Walsh said I should call her.", "Jennifer Walsh"),
        ("EMAIL_ADDRESS", "you can email me at jane.doe@example.com if you want", "jane.doe@example.com"),
        ("PHONE_NUMBER", "text me at (415) 555-0132 tonight", "555-0132"),
        ("PHONE_NUMBER", "my number is +44 20 7946 0958", "7946 0958"),
        ("URL", "I read it on https://www.example.org/help/anxiety yesterday", "example.org"),
        ("URL", "check out moon.biz for more", "moon.biz"),
        ("IP_ADDRESS", "someone from 203.0.113.54 keeps logging in", "203.0.113.54"),
        ("CREDIT_CARD", "my card number is 4111 1111 1111 1111", "4111 1111 1111 1111"),
        ("IBAN_CODE", "wire it to GB82 WEST 1234 5698 7654 32 please", "GB82 WEST"),
        ("US_SSN", "my ssn is 536-22-8726", "536-22-8726"),
        ("LOCATION", "I moved to Chicago last year.", "Chicago"),
    ],
)
def test_each_entity_type_is_replaced_by_a_typed_placeholder(analyzer, entity, text, value):
    (scrubbed,), result = scrub_messages(analyzer, text)
    assert value not in scrubbed
    assert f"<{entity}_1>" in scrubbed
    assert entity in set(result.findings["entity_type"])
    assert result.report["counts"][entity] >= 1


def test_placeholders_are_consistent_within_a_session(analyzer):
    sessions, messages, users = tables(
        {"s1": ("u1", 0, "I fell out with my friend Anna Lopez.", {"note": "Anna Lopez moved away"})},
        {"s1": ["Anna  Lopez never calls me.", "Who is Anna Lopez?", "My brother Tom Becker met Anna Lopez.",
                "email me at a.lopez@example.com", "again: a.lopez@example.com or call 555-123-4567"]},
    )
    result = scrub_tables(sessions, messages, users, analyzer)
    texts = list(result.messages["text"])
    assert result.sessions["topic"][0] == "I fell out with my friend <PERSON_1>."
    assert json.loads(result.sessions["metadata"][0]) == {"note": "<PERSON_1> moved away"}
    assert texts[0] == "<PERSON_1> never calls me."  # same text after casefold + whitespace collapse
    assert texts[1] == "Who is <PERSON_1>?"
    assert texts[2] == "My brother <PERSON_2> met <PERSON_1>."
    assert texts[3] == "email me at <EMAIL_ADDRESS_1>"
    assert texts[4] == "again: <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>"


def test_placeholders_are_independent_across_sessions(analyzer):
    sessions, messages, users = tables(
        {"a": ("u1", 0, None, None), "b": ("u2", 0, None, None)},
        {"a": ["My friend Bob Miller came over.", "Then my sister Clara Jensen called."],
         "b": ["My sister Clara Jensen is sick."]},
    )
    result = scrub_tables(sessions, messages, users, analyzer).messages.set_index(["session_id", "turn_index"])["text"]
    assert result[("a", 1)] == "Then my sister <PERSON_2> called."
    assert result[("b", 0)] == "My sister <PERSON_1> is sick."


def test_dates_and_times_are_kept_by_default(analyzer):
    text = "On Monday 3 May 2021 at 5pm I was 25 years old and it had been 2 weeks."
    (scrubbed,), result = scrub_messages(analyzer, text)
    assert scrubbed == text
    assert "DATE_TIME" not in result.report["counts"]


def test_clean_chat_is_left_alone(analyzer):
    texts = ["hi", "lol", "I'm so tired of this.", "It's been hard since 2018.", "done.it was a long day",
             "Thanks, that helps a lot!", "COVID made everything worse", "I prayed to God about it"]
    scrubbed, result = scrub_messages(analyzer, *texts)
    assert scrubbed == texts
    assert result.findings.empty


def test_scrubbing_scrubbed_text_changes_nothing(analyzer):
    texts = ["My friend <PERSON_1> lives in <LOCATION_1>.", "Call <PHONE_NUMBER_1> or mail <EMAIL_ADDRESS_2>"]
    scrubbed, result = scrub_messages(analyzer, *texts)
    assert scrubbed == texts and result.findings.empty


def test_topic_metadata_and_profile_are_scrubbed_keys_kept(analyzer):
    sessions, messages, users = tables(
        {"s1": ("u1", 0, "My boss Greta Lindqvist yells at me", {"contact": {"email": "greta@example.com", "n": 3},
                                                               "people": ["Greta Lindqvist", 7], "mood": "sad"}),
         "s2": ("u1", 1, None, None)},
        {"s1": ["hello"], "s2": ["hi again"]},
        users={"u1": {"name": "Greta Lindqvist", "city": "Boston", "age": 41}},
    )
    result = scrub_tables(sessions, messages, users, analyzer)
    session = result.sessions.set_index("session_id").loc["s1"]
    assert session["topic"] == "My boss <PERSON_1> yells at me"
    metadata = json.loads(session["metadata"])
    assert metadata == {"contact": {"email": "<EMAIL_ADDRESS_1>", "n": 3}, "people": ["<PERSON_1>", 7], "mood": "sad"}
    assert session["metadata"] == json.dumps(metadata, sort_keys=True, ensure_ascii=False)
    profile = json.loads(result.users["profile"][0])
    assert profile == {"name": "<PERSON_1>", "city": "<LOCATION_1>", "age": 41}  # the first session's map
    findings = result.findings
    assert set(findings["location"]) == {"topic", "metadata:contact.email", "metadata:people.0", "profile:name", "profile:city"}
    assert set(findings["session_id"]) == {"s1"}  # profile findings carry the user's first session
    report = result.report
    assert (report["topics_changed"], report["metadata_values_changed"], report["profile_values_changed"]) == (1, 2, 2)
    assert (report["sessions_changed"], report["messages_changed"], report["messages_total"]) == (1, 0, 2)


def test_findings_hold_offsets_never_text(analyzer):
    text = "Call Mark Olsen at 555-867-5309."
    (scrubbed,), result = scrub_messages(analyzer, text)
    io.PII_FINDINGS.validate(result.findings)
    assert scrubbed == "Call <PERSON_1> at <PHONE_NUMBER_1>."
    rows = result.findings.sort_values("start")
    assert [text[s:e] for s, e in zip(rows["start"], rows["end"])] == ["Mark Olsen", "555-867-5309"]
    assert list(rows["location"]) == ["message:0", "message:0"]
    assert not any("Olsen" in str(value) or "5309" in str(value) for value in result.findings.to_numpy().ravel())


def test_overlaps_resolve_deterministically():
    detections = [
        Detection(10, 20, "LOCATION", 0.85),  # NER guess over a structured identifier
        Detection(8, 30, "URL", 0.6),
        Detection(40, 45, "PHONE_NUMBER", 0.95),
        Detection(38, 50, "PHONE_NUMBER", 0.55),  # same type, overlapping: merged
        Detection(60, 70, "PERSON", 0.85),
        Detection(60, 66, "LOCATION", 0.85),  # same score, shorter: dropped
    ]
    expected = [Detection(8, 30, "URL", 0.6), Detection(38, 50, "PHONE_NUMBER", 0.95), Detection(60, 70, "PERSON", 0.85)]
    assert resolve_overlaps(detections) == expected
    assert resolve_overlaps(reversed(detections)) == expected


def test_unknown_entity_names_are_a_clear_error():
    with pytest.raises(ParamsError, match=r"unknown entity type\(s\) \['PASSPORT_NO'\]; supported: .*EMAIL_ADDRESS.*US_SSN"):
        Analyzer(PiiParams(entities=["PERSON", "PASSPORT_NO"]))


def test_leak_gate_raises_on_surviving_email_and_phone():
    messages = pd.DataFrame({
        "session_id": ["s1", "s1", "s2", "s3"], "turn_index": [0, 1, 0, 4],
        "text": ["fine", "write to bob@example.com", "call 555-123-4567", "(555) 123-4567 or x@y.io"],
    })
    with pytest.raises(LeakError) as error:
        leak_gate(messages)
    message = str(error.value)
    assert "3 scrubbed message(s)" in message and "2 e-mail, 2 phone" in message
    assert "s1 turn 1 (e-mail)" in message and "s2 turn 0 (phone)" in message and "s3 turn 4 (e-mail+phone)" in message
    assert "bob@example.com" not in message  # never echo the PII itself


def test_leak_gate_passes_years_ages_numbers_and_placeholders():
    messages = pd.DataFrame({
        "session_id": "s1", "turn_index": range(6),
        "text": ["In 2018 I was 5 years old.", "It costs $1,250.00 and 3.5 kg", "call me at <PHONE_NUMBER_1>",
                 "mail <EMAIL_ADDRESS_2> or <URL_1>", "from 9:30 to 17:45 on 2021-05-03", "my score went 120 -> 135"],
    })
    leak_gate(messages)


@settings(max_examples=200, deadline=None)
@given(year=st.integers(1900, 2099), age=st.integers(0, 120), count=st.integers(0, 99999), n=st.integers(1, 999))
def test_leak_patterns_ignore_ordinary_numbers(year, age, count, n):
    text = f"In {year} I was {age} years old, {count} steps, <PHONE_NUMBER_{n}> and <EMAIL_ADDRESS_{n}>"
    assert not re.search(LEAK_EMAIL_PATTERN, text) and not re.search(LEAK_PHONE_PATTERN, text)


def write_ingested(directory, sessions, messages, users):
    io.SESSIONS.write(sessions, paths.sessions_file(directory))
    io.MESSAGES.write(messages, paths.messages_file(directory))
    io.USERS.write(users, paths.users_file(directory))


SAMPLE = (
    {"s1": ("u1", 0, "I worry about my son Liam Carter", {"school": "Lincoln High in Denver"}),
     "s2": ("u1", 1, None, None), "s3": ("u2", 0, None, None)},
    {"s1": ["hi", "Liam Carter skipped school again, his teacher Mrs. Novak emailed novak@school.org",
            "call her at 303-555-0147", "ok thanks"],
     "s2": ["Liam is doing better", "lol"],
     "s3": ["my ip 198.51.100.7 got banned", "see www.example.com/ban"]},
    {"u1": {"name": "Dana Carter"}},
)


def test_run_scrub_writes_identical_outputs_twice(analyzer, tmp_path):
    write_ingested(tmp_path / "in", *tables(*SAMPLE))
    outputs = []
    for run, engine in enumerate([analyzer, Analyzer(PiiParams())]):  # a fresh engine the second time
        out = tmp_path / f"out{run}"
        report = run_scrub(PiiParams(), tmp_path / "in", out, out / "pii_findings.parquet", out / "pii.json",
                           analyzer=engine, progress=False)
        assert {"counts", "messages_changed", "messages_total", "sessions_changed", "topics_changed",
                "metadata_values_changed"} <= set(report)
        assert "seconds" not in report  # the git-tracked metric only changes when the data does
        outputs.append(out)
    for name in ["sessions.parquet", "messages.parquet", "users.parquet", "pii_findings.parquet", "pii.json"]:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    reports = [json.loads((out / "pii.json").read_text()) for out in outputs]
    timed = run_scrub(PiiParams(), tmp_path / "in", tmp_path / "timed", tmp_path / "timed" / "f.parquet",
                      tmp_path / "timed.json", analyzer=analyzer, progress=False, report_timing=True)
    assert {"seconds", "model_load_seconds", "messages_per_second"} <= set(timed)
    messages = io.MESSAGES.read(outputs[0] / "messages.parquet")
    assert "Carter" not in " ".join(messages["text"]) and "novak@" not in " ".join(messages["text"])
    assert reports[0]["messages_total"] == 8 and reports[0]["messages_changed"] == 5


def test_no_network_is_attempted(monkeypatch, capfd, caplog):
    import dial.pii as pii

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(pii, "_TLD_EXTRACT", None)  # force a fresh tldextract load in here
    engine = Analyzer(PiiParams())
    (scrubbed,), _ = scrub_messages(engine, "see https://www.example.com/x and mail me@example.co.uk or me@test.dev")
    assert scrubbed == "see <URL_1> and mail <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_2>"
    assert attempts == []
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "suffix" not in captured.err.lower()
    assert [record for record in caplog.records if record.levelno >= 30] == []
