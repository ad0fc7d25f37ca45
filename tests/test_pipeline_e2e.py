"""The real pipeline, end to end: `dvc repro` on a smoke-sized params override in a fresh copy.

Also proves: a second `dvc repro` is a no-op, a forced re-run gives byte-identical outputs (same
hashes in dvc.lock), and `dial check --all` / `dial query` work on every artifact.
"""

import json
from pathlib import Path

import pytest

from dial.workspace import copy_project, run

REPO = Path(__file__).resolve().parents[1]
SMOKE = {
    "data": {"max_sessions": 24},
    "split": {"valid_fraction": 0.2, "test_fraction": 0.2},
    "sft": {"max_train_samples": 6, "max_sample_tokens": 768, "save_steps": 4},
    "simulate": {"n_contexts": 2, "max_turns": 2, "decoding": {"max_new_tokens": 10}},
    "chatbots": [
        {"name": "supportive", "backend": "hf", "system_prompt": "Be kind and brief.", "decoding": {"max_new_tokens": 10}},
        {"name": "replay", "backend": "replay"},
    ],
}
DATA_STAGES = ["ingest", "scrub_pii", "split", "build_contexts", "sft_samples"]
MODEL_STAGES = ["sft", "simulate@zero-shot", "simulate@sft"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fresh git repo with the project's files (as a clone would have) and smoke params."""
    root = copy_project(REPO, tmp_path_factory.mktemp("pipeline"), SMOKE)
    first = run(["dvc", "repro"], root)
    return root, first


def test_repro_builds_every_artifact(workspace):
    root, first = workspace
    for stage in ["base_model"] + DATA_STAGES + MODEL_STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert (root / "models/base/model.safetensors").exists()
    for path in ["data/ingested/messages.parquet", "data/scrubbed/messages.parquet", "data/splits/splits.parquet",
                 "data/contexts/contexts.parquet", "data/sft/samples.parquet", "data/quarantine/ingest.parquet"]:
        assert (root / path).exists(), path
    data_report = json.loads((root / "reports/data.json").read_text())
    assert data_report["rows_in"] == data_report["rows_out"] + data_report["rows_quarantined"]
    split_report = json.loads((root / "reports/split.json").read_text())
    assert sum(split["users"] for split in split_report.values()) >= 3
    samples_report = json.loads((root / "reports/sft_samples.json").read_text())
    assert samples_report["samples"] > samples_report["end_samples"] > 0
    assert json.loads((root / "reports/contexts.json").read_text())["tokens"]["max"] <= 15000
    pii_report = json.loads((root / "reports/pii.json").read_text())
    assert pii_report["messages_total"] == data_report["messages"]
    assert set(pii_report["counts"]) == {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "URL", "IP_ADDRESS",
                                         "CREDIT_CARD", "IBAN_CODE", "US_SSN", "LOCATION"}
    assert "seconds" not in pii_report  # tracked metrics hold no timings (they would never be equal)
    assert (root / "models/simulator/sft/adapter_model.safetensors").exists()
    for simulator in ("zero-shot", "sft"):
        report = json.loads((root / f"reports/simulate/{simulator}.json").read_text())
        assert report["sessions"] == 2 * 2 and set(report["per_chatbot"]) == {"supportive", "replay"}
        assert sum(report["stop_reasons"].values()) == report["sessions"]


def test_simulated_sessions_are_readable(workspace):
    root, _ = workspace
    ids = run(["dial", "query", "SELECT session_id FROM simulated_sft_sessions ORDER BY 1 LIMIT 1"], root).stdout.split()
    shown = run(["dial", "show", ids[-1]], root).stdout
    assert "simulator sft" in shown and "stop " in shown and "USER" in shown


def test_second_repro_is_a_no_op(workspace):
    root, _ = workspace
    again = run(["dvc", "repro"], root)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root).stdout


def test_forced_rerun_gives_byte_identical_outputs(workspace):
    root, _ = workspace
    before = (root / "dvc.lock").read_text()
    run(["dvc", "repro", "-f", "-s", *DATA_STAGES, "sft", "simulate@sft"], root)
    assert (root / "dvc.lock").read_text() == before


def test_dial_check_and_query_on_every_artifact(workspace):
    root, _ = workspace
    checked = run(["dial", "check", "--all"], root).stdout
    for view in ["ingested_messages", "scrubbed_messages", "contexts", "splits", "sft_samples"]:
        assert view.split("_")[-1] in checked
    assert "FAIL" not in checked and "no_pii_pattern" in checked and "splits_disjoint" in checked
    views = run(["dial", "views"], root).stdout
    for name in ["sessions", "messages", "users", "contexts", "splits", "sft_samples", "quarantine_ingest"]:
        assert name in views
    result = run(["dial", "query", "SELECT split, count(*) AS n FROM sft_samples GROUP BY split ORDER BY split"], root).stdout
    assert "train" in result
    bad = run(["dial", "query", "SELECT * FROM nope"], root, check=False)
    assert bad.returncode == 1 and "available views" in bad.stderr and "Traceback" not in bad.stderr
