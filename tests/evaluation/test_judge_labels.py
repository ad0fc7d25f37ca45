"""The hand-labelled set bench/judge_bench.py measures the judges on: it loads, it is big enough,
its category names are the taxonomy's, ESConv text never sits in the repository, and every labelled
turn is an assistant message of its session (ESConv read in place; skipped without the dataset)."""

import json

import pytest

from dial.errors import DialError
from dial.evaluation.judges.labelled import SOURCES, load_labelled_messages, load_second_rater, read_sessions
from dial.evaluation.taxonomy import load_taxonomy

MIN_ROWS = 300


@pytest.fixture(scope="module")
def taxonomy(repo_root):
    return load_taxonomy(repo_root / "taxonomy.yaml")


@pytest.fixture(scope="module")
def labels_file(repo_root):
    return repo_root / "tests" / "fixtures" / "judge_labels.jsonl"


def test_labelled_set_loads_with_taxonomy_category_names(labels_file, taxonomy):
    rows = load_labelled_messages(labels_file, taxonomy)  # checks every category name
    assert len(rows) >= MIN_ROWS
    assert {row.source for row in rows} == set(SOURCES)
    assert all(taxonomy.category(name) is not None for row in rows for name in row.categories)
    assert any(row.categories for row in rows) and any(not row.categories for row in rows)
    # ESConv is CC BY-NC: only ids and labels in the repository
    raw = [json.loads(line) for line in labels_file.read_text(encoding="utf-8").splitlines()]
    assert all(not {"text", "previous_user"} & set(row) for row in raw if row["source"] == "esconv")


def test_chitchat_rows_match_the_installed_dataset(labels_file, taxonomy, tmp_path):
    chitchat_rows = [row for row in load_labelled_messages(labels_file, taxonomy) if row.source == "chitchat"]
    sessions = read_sessions(chitchat_rows, esconv_dir=tmp_path)  # no ESConv row: the folder is not read
    assert len(sessions) == len({row.session_id for row in chitchat_rows})


def test_esconv_rows_are_assistant_turns_of_the_sessions_read_in_place(labels_file, taxonomy, esconv_dir):
    esconv_rows = [row for row in load_labelled_messages(labels_file, taxonomy) if row.source == "esconv"]
    sessions = read_sessions(esconv_rows, esconv_dir)  # raises unless each turn is an assistant message
    assert all(sessions[row.key][row.turn_index][1] == "assistant" for row in esconv_rows)


@pytest.mark.parametrize("change, message", [
    ({"categories": ["Not a category"]}, r"unknown issue category \['Not a category'\]"),
    ({"source": "reddit"}, "unknown source 'reddit'"),
    ({"text": "copied text"}, "ESConv rows never do"),
])
def test_bad_rows_are_errors_naming_the_line(tmp_path, taxonomy, change, message):
    good = {"source": "esconv", "session_id": "esconv-train-1", "turn_index": 1, "round": 1, "drawn_as": "unflagged", "categories": []}
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "turn_index": 3, **change}) + "\n", encoding="utf-8")
    with pytest.raises(DialError, match=message) as error:
        load_labelled_messages(path, taxonomy)
    assert f"{path}:2" in str(error.value)


# --- the held-out draw and the second rater (docs/judges.md, "Held-out check") ------------------


@pytest.fixture(scope="module")
def heldout_file(repo_root):
    return repo_root / "tests" / "fixtures" / "judge_labels_heldout.jsonl"


@pytest.fixture(scope="module")
def second_rater_file(repo_root):
    return repo_root / "tests" / "fixtures" / "judge_labels_second_rater.jsonl"


def test_heldout_set_loads_is_marked_and_disjoint_from_the_design_set(heldout_file, labels_file, taxonomy):
    rows = load_labelled_messages(heldout_file, taxonomy)  # same loader: checks every category name
    assert len(rows) >= 100 and {row.source for row in rows} == set(SOURCES)
    assert all(taxonomy.category(name) is not None for row in rows for name in row.categories)
    raw = [json.loads(line) for line in heldout_file.read_text(encoding="utf-8").splitlines()]
    assert all(row["set"].startswith("heldout") and row["round"] == 4 and row["stratum_size"] > 0 for row in raw)
    assert all(not {"text", "previous_user"} & set(row) for row in raw if row["source"] == "esconv")  # CC BY-NC
    design = {(row.source, row.session_id, row.turn_index) for row in load_labelled_messages(labels_file, taxonomy)}
    assert not design & {(row.source, row.session_id, row.turn_index) for row in rows}


def test_fresh_heldout_set_loads_is_marked_and_disjoint_from_the_other_sets(repo_root, heldout_file, labels_file, taxonomy):
    path = repo_root / "tests" / "fixtures" / "judge_labels_heldout2.jsonl"  # round 5, seed 20261208
    rows = load_labelled_messages(path, taxonomy)
    assert len(rows) >= 90 and {row.source for row in rows} == set(SOURCES)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(row["set"].startswith("heldout2") and row["round"] == 5 and row["stratum_size"] > 0 for row in raw)
    assert all(not {"text", "previous_user"} & set(row) for row in raw if row["source"] == "esconv")  # CC BY-NC
    keys = {(row.source, row.session_id, row.turn_index) for row in rows}
    for other in (labels_file, heldout_file):
        assert not keys & {(row.source, row.session_id, row.turn_index) for row in load_labelled_messages(other, taxonomy)}


def test_round6_heldout_set_loads_is_marked_and_disjoint_from_every_other_set(repo_root, heldout_file, labels_file, taxonomy):
    fixtures = repo_root / "tests" / "fixtures"
    path = fixtures / "judge_labels_heldout3.jsonl"  # round 6, seed 20261209
    rows = load_labelled_messages(path, taxonomy)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 120 and {row.source for row in rows} == set(SOURCES)
    assert sum(1 for row in raw if row["drawn_as"] != "unflagged") >= 90  # the flags the precision rests on
    assert all(row["set"].startswith("heldout3") and row["round"] == 6 and row["stratum_size"] > 0 for row in raw)
    assert all(not {"text", "previous_user"} & set(row) for row in raw if row["source"] == "esconv")  # CC BY-NC
    keys = {(row.source, row.session_id, row.turn_index) for row in rows}
    assert len(keys) == len(rows)
    for other in (labels_file, heldout_file, fixtures / "judge_labels_heldout2.jsonl"):
        assert not keys & {(row.source, row.session_id, row.turn_index) for row in load_labelled_messages(other, taxonomy)}


def test_second_rater_labels_load_with_valid_categories_ids_only(second_rater_file, labels_file, taxonomy):
    rows = load_second_rater(second_rater_file, taxonomy)  # raises on an unknown category or any text
    assert len(rows) == 60 and len({row[:3] for row in rows}) == 60
    design = {(row.source, row.session_id, row.turn_index) for row in load_labelled_messages(labels_file, taxonomy)}
    assert {row[:3] for row in rows} <= design
    raw = [json.loads(line) for line in second_rater_file.read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"source", "session_id", "turn_index", "categories"} for row in raw)


def test_round5_second_rater_labels_cover_the_fresh_draw_ids_only(repo_root, taxonomy):
    path = repo_root / "tests" / "fixtures" / "judge_labels_second_rater_round5.jsonl"
    rows = load_second_rater(path, taxonomy)  # raises on an unknown category or any text
    round5 = load_labelled_messages(repo_root / "tests" / "fixtures" / "judge_labels_heldout2.jsonl", taxonomy)
    assert sorted(row[:3] for row in rows) == sorted((row.source, row.session_id, row.turn_index) for row in round5)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"source", "session_id", "turn_index", "categories"} for row in raw)  # ESConv: CC BY-NC
