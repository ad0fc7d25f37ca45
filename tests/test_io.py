"""Artifacts: schema enforced on write and read, atomic writes, byte-identical outputs."""

import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dial import io


def messages(**overrides):
    frame = pd.DataFrame({
        "session_id": ["s1", "s1", "s2"], "turn_index": [0, 1, 0], "role": ["user", "assistant", "user"],
        "text": ["hi", "hello", "hey"], "timestamp": [None, "2018-05-02T19:38:15Z", None], "metadata": ["{}"] * 3,
    })
    for column, values in overrides.items():
        frame[column] = values
    return frame


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_and_schema_name_in_metadata(tmp_path):
    path = io.MESSAGES.write(messages(), tmp_path / "m.parquet")
    artifact, frame = io.read_any(path)
    assert artifact is io.MESSAGES and len(frame) == 3
    assert pq.read_schema(path).metadata[io.SCHEMA_KEY] == b"messages"


def test_same_rows_in_any_order_give_identical_bytes(tmp_path):
    a = io.MESSAGES.write(messages(), tmp_path / "a.parquet")
    b = io.MESSAGES.write(messages().iloc[::-1], tmp_path / "b.parquet")
    assert digest(a) == digest(b)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"role": ["user", "bot", "user"]}, "role"),
        ({"text": ["hi", "   ", "hey"]}, "_text_not_blank"),
        ({"turn_index": [0, 2, 0]}, "_turns_contiguous"),
        ({"timestamp": ["yesterday", None, None]}, "timestamp"),
        ({"metadata": ["{}", "[1]", "{}"]}, "_metadata_is_json_object"),
    ],
)
def test_write_rejects_bad_rows_naming_file_row_and_column(tmp_path, overrides, expected):
    target = tmp_path / "m.parquet"
    with pytest.raises(io.ArtifactError) as error:
        io.MESSAGES.write(messages(**overrides), target)
    assert str(target) in str(error.value) and expected in str(error.value) and "row " in str(error.value)
    assert not target.exists()


def test_read_rejects_a_tampered_file(tmp_path):
    path = tmp_path / "m.parquet"
    table = pa.Table.from_pandas(messages(role=["user", "robot", "user"]), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({io.SCHEMA_KEY: b"messages"}), path)
    with pytest.raises(io.ArtifactError, match="robot"):
        io.MESSAGES.read(path)


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = io.MESSAGES.write(messages(), tmp_path / "m.parquet")
    before = digest(path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        io.MESSAGES.write(messages(text=["a", "b", "c"]), path)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]


def test_unknown_files_are_reported_clearly(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(io.ArtifactError, match="not a dial artifact"):
        io.artifact_of(plain)
    text = tmp_path / "notes.parquet"
    text.write_text("hello")
    with pytest.raises(io.ArtifactError, match="not a Parquet file"):
        io.artifact_of(text)
