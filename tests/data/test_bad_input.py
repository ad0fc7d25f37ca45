"""Every class of bad input: `fail` names file, line and field; `quarantine` keeps the row with its
reasons and the books balance (rows_in == rows_out + rows_quarantined)."""

import json
from dataclasses import dataclass

import pytest
from ingest_helpers import FIXTURES, session_line, write_jsonl

from dial.errors import InputError

GOOD = [session_line("s-1", "u-1"), session_line("s-2", "u-2"), session_line("s-3", "u-1")]
BAD_LINE = 3  # the bad row is inserted as the third line


@dataclass(frozen=True)
class Case:
    name: str
    line: bytes | str | dict
    kind: str
    field: str
    message: str  # expected in the error text and the quarantine reason


def with_messages(*messages, **overrides):
    return session_line("s-bad", "u-bad", messages=list(messages), **overrides)


USER = {"role": "user", "text": "hi"}
CASES = [
    Case("malformed JSON", '{"session_id": "s-bad", "user_id": ', "malformed_json", "", "malformed JSON at column"),
    Case("invalid UTF-8", b'{"session_id": "s-bad", "user_id": "u", "messages": [{"role": "user", "text": "caf\xe9"}]}',
         "invalid_utf8", "", "invalid UTF-8 at byte"),
    Case("not an object", "[1, 2, 3]", "mistyped_field", "", "expected one JSON object per line, got a list"),
    Case("missing user_id", {k: v for k, v in session_line("s-bad").items() if k != "user_id"},
         "missing_field", "user_id", "missing required field"),
    Case("missing messages", {k: v for k, v in session_line("s-bad").items() if k != "messages"},
         "missing_field", "messages", "missing required field"),
    Case("mistyped user_id", session_line("s-bad", user_id=42), "mistyped_field", "user_id", "expected a string, got a number"),
    Case("mistyped text", with_messages(USER, {"role": "assistant", "text": ["a", "b"]}),
         "mistyped_field", "messages[1].text", "expected a string, got a list"),
    Case("mistyped metadata", session_line("s-bad", metadata="vip"), "mistyped_field", "metadata",
         "expected an object, got a string"),
    Case("bad timestamp", session_line("s-bad", started_at="last tuesday"), "invalid_timestamp", "started_at",
         "not an ISO-8601 timestamp: 'last tuesday'"),
    Case("unknown field", session_line("s-bad", user_profle={"a": 1}), "unknown_field", "user_profle", "unknown field"),
    Case("blank id", session_line("  "), "blank_id", "session_id", "blank id"),
    Case("unknown role", with_messages(USER, {"role": "assistant", "text": "ok"}, USER, {"role": "bot", "text": "beep"}),
         "unknown_role", "messages[3].role", "unknown role 'bot' (expected user or assistant)"),
    Case("empty text", with_messages(USER, {"role": "assistant", "text": ""}), "empty_text", "messages[1].text", "empty text"),
    Case("whitespace text", with_messages({"role": "user", "text": " \n\t "}), "empty_text", "messages[0].text",
         "whitespace-only text"),
    Case("1 MB message", with_messages(USER, {"role": "user", "text": "x" * 1_000_000}), "message_too_long",
         "messages[1].text", "message too long: 1000000 characters (data.max_message_chars is 20000)"),
    Case("no user message", with_messages({"role": "assistant", "text": "anyone?"}), "no_user_message", "messages",
         "session has no user message"),
    Case("no messages", with_messages(), "no_user_message", "messages", "session has no messages"),
    Case("duplicate session_id", session_line("s-1", "u-9"), "duplicate_id", "session_id",
         "duplicate session_id 's-1' (first at "),
]


def write_case(tmp_path, case: Case):
    return write_jsonl(tmp_path / "logs.jsonl", GOOD[:2] + [case.line] + GOOD[2:])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fail_mode_names_file_line_and_field(ingest, tmp_path, case):
    path = write_case(tmp_path, case)
    with pytest.raises(InputError) as error:
        ingest(source="canonical", path=str(path))
    text = str(error.value)
    location = f"logs.jsonl:{BAD_LINE}: " + (f"field '{case.field}': " if case.field else "")
    assert location + case.message in text
    assert text.startswith("1 of 4 input rows are bad input:")
    assert "data.on_bad_rows: quarantine" in text
    assert not (tmp_path / "run0" / "ingested").exists()  # nothing written on failure


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_quarantine_mode_keeps_the_row_and_balances(ingest, tmp_path, case):
    path = write_case(tmp_path, case)
    got = ingest(source="canonical", path=str(path), on_bad_rows="quarantine")
    report = got.report
    assert (report["rows_in"], report["rows_out"], report["rows_quarantined"]) == (4, 3, 1)
    assert report["quarantine_reasons"] == {case.kind: 1}
    assert sorted(got.sessions["session_id"]) == ["s-1", "s-2", "s-3"]
    assert got.users.set_index("user_id")["n_sessions"].to_dict() == {"u-1": 2, "u-2": 1}
    [row] = got.quarantine.to_dict("records")
    assert row["source_file"].endswith("logs.jsonl") and row["line"] == BAD_LINE and row["field"] == case.field
    assert case.message in row["reason"]
    raw_line = path.read_bytes().split(b"\n")[BAD_LINE - 1]
    assert row["raw"] == raw_line.decode("utf-8", errors="replace")


def test_several_problems_in_one_row_are_one_quarantine_row(ingest, tmp_path):
    bad = session_line("s-bad", user_id=None, messages=[{"role": "bot", "text": "x"}, {"role": "user", "text": ""}])
    path = write_jsonl(tmp_path / "logs.jsonl", [GOOD[0], bad])
    got = ingest(source="canonical", path=str(path), on_bad_rows="quarantine")
    [row] = got.quarantine.to_dict("records")
    assert row["line"] == 2 and row["field"] == "user_id"
    assert row["reason"] == (
        "field 'user_id': expected a string, got null; "
        "field 'messages[0].role': unknown role 'bot' (expected user or assistant); "
        "field 'messages[1].text': empty text"
    )
    assert got.report["quarantine_reasons"] == {"empty_text": 1, "mistyped_field": 1, "unknown_role": 1}
    assert got.report["rows_quarantined"] == 1


def test_fail_lists_twenty_problems_then_counts_the_rest(ingest, tmp_path):
    lines = [GOOD[0]] + [with_messages({"role": "robot", "text": "x"}) for _ in range(25)]
    path = write_jsonl(tmp_path / "logs.jsonl", lines)
    with pytest.raises(InputError) as error:
        ingest(source="canonical", path=str(path))
    text = str(error.value)
    assert text.count("unknown role 'robot'") == 20
    assert "logs.jsonl:21: field 'messages[0].role'" in text and "logs.jsonl:22:" not in text
    assert "... and 5 more" in text


def test_zero_valid_rows_is_an_error_even_in_quarantine_mode(ingest, tmp_path):
    path = write_jsonl(tmp_path / "logs.jsonl", ["{oops", with_messages()])
    with pytest.raises(InputError, match=r"logs.jsonl: no valid sessions \(2 input rows, 2 rejected"):
        ingest(source="canonical", path=str(path), on_bad_rows="quarantine")
    assert (tmp_path / "run0" / "quarantine" / "ingest.parquet").exists()  # the reasons are kept
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(InputError, match=r"no valid sessions \(0 input rows"):
        ingest(source="canonical", path=str(empty))


def test_blank_lines_are_not_rows_and_crlf_and_bom_are_fine(ingest, tmp_path):
    path = tmp_path / "logs.jsonl"
    body = "\r\n".join(json.dumps(line) for line in GOOD[:2]) + "\r\n\r\n" + json.dumps(GOOD[2]) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    got = ingest(source="canonical", path=str(path))
    assert got.report["rows_in"] == 3 and len(got.sessions) == 3


def test_max_message_chars_is_a_parameter(ingest, tmp_path):
    path = write_jsonl(tmp_path / "logs.jsonl", GOOD + [with_messages({"role": "user", "text": "x" * 50})])
    assert ingest(source="canonical", path=str(path), max_message_chars=50).report["rows_quarantined"] == 0
    with pytest.raises(InputError, match=r"logs.jsonl:4: field 'messages\[0\].text': message too long: 50 characters"):
        ingest(source="canonical", path=str(path), max_message_chars=49)


# --- the other adapters share the checks --------------------------------------------------------


def test_openai_bad_rows(ingest, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}]}
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            good,
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]},
            {"messages": [{"role": "system", "content": "be nice"}, {"role": "assistant", "content": "hello"}]},
            {"session_id": "dup", "messages": [{"role": "user", "content": "a"}]},
            {"session_id": "dup", "messages": [{"role": "user", "content": "b"}]},
            {"messages": [{"role": "user"}]},
        ],
    )
    with pytest.raises(InputError) as error:
        ingest(source="openai", path=str(path))
    text = str(error.value)
    assert "chat.jsonl:2: field 'messages[1].role': unknown role 'tool' (expected system, user or assistant)" in text
    assert "chat.jsonl:3: field 'messages': session has no user message" in text
    assert "chat.jsonl:5: field 'session_id': duplicate session_id 'dup' (first at " in text
    assert "chat.jsonl:6: field 'messages[0].content': missing required field" in text
    got = ingest(source="openai", path=str(path), on_bad_rows="quarantine")
    assert (got.report["rows_in"], got.report["rows_out"], got.report["rows_quarantined"]) == (6, 2, 4)
    assert sorted(got.quarantine["line"]) == [2, 3, 5, 6]


def test_chitchat_bad_conversations(ingest, tmp_path):
    raw = json.loads((FIXTURES / "chitchat_example.json").read_text())
    raw["conv-late"]["messages"][1][0]["text"] = "   "
    raw["conv-third"] = {
        "messages": [
            [{"text": "hi", "timestamp": "2018-05-05T10:00:00Z", "sender": "x"}],
            [{"text": "hey", "timestamp": "2018-05-05T10:00:01Z", "sender": "y"}],
            [{"text": "me too", "timestamp": "2018-05-05T10:00:02Z", "sender": "z"}],
        ],
        "start": "2018-05-05T16:00:00Z",
    }
    text = json.dumps(raw)
    # A duplicate conversation id (json.load would silently keep only the last one).
    text = text[:-1] + ', "conv-early": ' + json.dumps(raw["conv-early"]) + "}"
    path = tmp_path / "dataset.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        ingest(source="chitchat", path=str(path))
    message = str(error.value)
    assert "dataset.json:1: conversation 'conv-late': field 'messages[1][0].text': whitespace-only text" in message
    assert "dataset.json:5: conversation 'conv-third': field 'messages[2][0].sender': third sender 'z'" in message
    assert "dataset.json:6: conversation 'conv-early': field 'session_id': duplicate session_id 'conv-early'" in message
    got = ingest(source="chitchat", path=str(path), on_bad_rows="quarantine")
    assert (got.report["rows_in"], got.report["rows_out"], got.report["rows_quarantined"]) == (6, 3, 3)
    assert got.report["quarantine_reasons"] == {"duplicate_id": 1, "empty_text": 1, "unknown_role": 1}
    assert sorted(got.quarantine["line"]) == [1, 5, 6]
    assert json.loads(got.quarantine.set_index("line").loc[5, "raw"]) == {"conv-third": raw["conv-third"]}


def test_chitchat_whole_file_problems_are_line_zero(ingest, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"conv": {"messages": [}')
    with pytest.raises(InputError, match=r"dataset.json:0: malformed JSON at line 1"):
        ingest(source="chitchat", path=str(path))


def test_esconv_bad_rows(ingest, tmp_path):
    lines = (FIXTURES / "esconv_split_example.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["dialog"][1]["speaker"] = "bot"
    path = write_jsonl(tmp_path / "train.jsonl", [lines[0], bad, lines[1]])
    with pytest.raises(InputError, match=r"train.jsonl:2: field 'dialog\[1\].speaker': unknown speaker 'bot' \(expected usr or sys\)"):
        ingest(source="esconv", path=str(path))

    original = json.loads((FIXTURES / "esconv_original_example.json").read_text())
    original[1]["dialog"][2]["content"] = ""
    path = tmp_path / "ESConv.json"
    path.write_text(json.dumps(original))
    with pytest.raises(InputError, match=r"ESConv.json:2: conversation 2 of the list: field 'dialog\[2\].content': empty text"):
        ingest(source="esconv", path=str(path))
    got = ingest(source="esconv", path=str(path), on_bad_rows="quarantine")
    assert got.sessions["session_id"].tolist() == ["esconv-1"] and got.quarantine["line"].tolist() == [2]
