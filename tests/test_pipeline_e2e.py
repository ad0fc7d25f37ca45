"""The real pipeline, end to end: `dvc repro` on a smoke-sized params override in a fresh copy,
through the DIAL loop (one iteration here: zero-shot, sft, it1) and the evaluation reports.

Also proves: a second `dvc repro` is a no-op, a forced re-run gives byte-identical outputs (same
hashes in dvc.lock), `dial check --all` / `dial query` work on every artifact, changing
`dpo.beta` re-runs only the DPO stage and what depends on it, and `dvc metrics diff` shows the
difference between the two experiments.

The smoke configuration guarantees what these tests need whatever the numerics (bf16 and fp32
machines sample different sessions and pairs): pairs are kept whenever the chosen alternative
beats the rejected one (`require_opposite_signs: false`, instead of the paper's sign filter, which
a 2-layer discriminator trained on 3 pairs may leave empty), alternatives end at their first
sentence (a cut one is never paired), and DPO makes 2 epochs, so one kept
pair already gives the 2 steps the beta experiment needs. `pytest --precision fp32|bf16` runs the
pipeline in that precision (every `*.precision` of the smoke params).
"""

import copy
import json
from pathlib import Path

import pytest
import yaml

from dial.workspace import copy_project, run

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8"))  # shared with bench/gpu_check.py
PRECISION_SECTIONS = ("sft", "simulate", "discriminator", "pairs", "dpo")  # every model stage's precision knob
DATA_STAGES = ["ingest", "scrub_pii", "split", "build_contexts", "sft_samples"]
SIMULATORS = ["zero-shot", "sft", "it1"]
MODEL_STAGES = (["sft"] + [f"simulate@{s}" for s in SIMULATORS] + [f"discriminator@{s}" for s in SIMULATORS]
                + ["pairs@it1", "dpo@it1", "evaluate"])

pytestmark = pytest.mark.e2e


def smoke_params(precision: str) -> dict:
    """SMOKE, with every model stage's precision set to `precision` unless it is auto."""
    params = copy.deepcopy(SMOKE)
    if precision != "auto":
        for section in PRECISION_SECTIONS:
            params.setdefault(section, {})["precision"] = precision
    return params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, forced_precision):
    """A fresh git repo with the project's files (as a clone would have) and smoke params."""
    root = copy_project(REPO, tmp_path_factory.mktemp("pipeline"), smoke_params(forced_precision))
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
    for simulator in SIMULATORS:
        report = json.loads((root / f"reports/simulate/{simulator}.json").read_text())
        # up to 4 held-out contexts (as many as the smoke split has) x 2 chatbots
        assert report["sessions"] in (4, 6, 8) and set(report["per_chatbot"]) == {"supportive", "replay"}
        assert sum(report["stop_reasons"].values()) == report["sessions"]
        discriminator = json.loads((root / f"reports/discriminator/{simulator}.json").read_text())
        assert discriminator["view"] == "user_only" and discriminator["metrics"]["overall"]["n"] > 0
        assert (root / f"models/discriminator/{simulator}/adapter_model.safetensors").exists()


def test_dial_iteration_outputs(workspace):
    root, _ = workspace
    pairs = json.loads((root / "reports/pairs/it1.json").read_text())
    assert pairs["critical_points"]["total"] > 0
    dpo = json.loads((root / "reports/dpo/it1.json").read_text())
    manifest = json.loads((root / "models/simulator/it1/dial_model.json").read_text())
    assert manifest["previous_simulator"].endswith("sft")
    # Without the sign filter a point is dropped only for < 2 distinct texts or tied rewards.
    assert pairs["require_opposite_signs"] is False and pairs["kept_pairs"] >= 1, pairs
    assert not dpo.get("skipped") and dpo["steps"] >= 2
    # Every model stage says what `auto` resolved to (bf16 and fp32 machines write different outputs).
    resolved = {json.loads((root / path).read_text())["precision"] for path in
                ["reports/sft.json", "reports/simulate/sft.json", "reports/discriminator/sft.json",
                 "reports/pairs/it1.json", "reports/dpo/it1.json"]}
    assert len(resolved) == 1 and resolved <= {"bf16", "fp32"}, resolved
    assert (root / "models/simulator/it1/adapter_model.safetensors").exists()


def test_reports(workspace):
    root, _ = workspace
    metrics = json.loads((root / "reports/metrics.json").read_text())
    for group in ["real", *SIMULATORS]:
        assert any(key.startswith(f"{group}.lexical.") for key in metrics), group
    assert "it1.discriminator.overall.accuracy" in metrics
    report = (root / "reports/report.md").read_text()
    for group in ["real", *SIMULATORS]:
        assert f"| {group} " in report
    for figure in (root / "reports/figures").glob("*.png"):
        assert figure.read_bytes()[:4] == b"\x89PNG" and f"figures/{figure.name}" in report


def test_simulated_sessions_are_readable(workspace):
    root, _ = workspace
    ids = run(["dial", "query", "SELECT session_id FROM simulated_sft_sessions ORDER BY 1 LIMIT 1"], root).stdout.split()
    shown = run(["dial", "show", ids[-1]], root).stdout
    assert "simulator sft" in shown and "stop " in shown and "USER" in shown


def test_evaluate_chatbot_runs_the_trained_simulator_against_two_chatbots(workspace, tmp_path):
    """`dial evaluate-chatbot` on the trained sft simulator: the A/B of two chatbots, the simulated
    users' errors and goal alignment, and the sessions and judgements written to --out."""
    root, _ = workspace
    out = tmp_path / "ab"
    printed = run(["dial", "evaluate-chatbot", "--chatbot", "supportive", "--chatbot", "replay", "--simulator", "sft",
                   "--n-contexts", "2", "--out", str(out)], root).stdout
    assert "simulator sft, judge rules, 4 sessions" in printed
    assert "A/B supportive → replay" in printed and "simulator errors:" in printed
    assert "goal alignment (UGST, rules tracker):" in printed and "per chatbot: replay" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["chatbots"]) == {"supportive", "replay"} and summary["goals"]["n_sessions"] + summary["goals"]["n_sessions_without_goal"] == 4
    for name in ("sessions", "messages", "simulations", "issues", "user_actions", "goal_states"):
        assert (out / f"{name}.parquet").is_file()


def test_second_repro_is_a_no_op(workspace):
    root, _ = workspace
    again = run(["dvc", "repro"], root)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root).stdout


def changed_outputs(before: str, after: str) -> list[str]:
    """`stage: path` of every output whose hash differs between two dvc.lock texts."""
    def hashes(text: str) -> dict[str, str]:
        stages = yaml.safe_load(text)["stages"]
        return {f"{stage}: {out['path']}": out.get("md5", "") for stage, entry in stages.items() for out in entry.get("outs", [])}

    old, new = hashes(before), hashes(after)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def test_forced_rerun_gives_byte_identical_outputs(workspace):
    root, _ = workspace
    before = (root / "dvc.lock").read_text()
    run(["dvc", "repro", "-f", "-s", *DATA_STAGES, "sft", "simulate@sft", "discriminator@sft", "pairs@it1", "dpo@it1"], root)
    after = (root / "dvc.lock").read_text()
    # The changed outputs show where a divergence starts (everything downstream changes with it).
    assert after == before, f"a forced re-run changed these outputs: {changed_outputs(before, after)}"


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


def test_changing_dpo_beta_reruns_only_dpo_and_what_follows(workspace):
    """Runs last: it commits the first run, then runs an experiment on top of it."""
    root, _ = workspace
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=dial", "-c", "user.email=dial@localhost", "commit", "-qm", "first run"], root)
    experiment = run(["dvc", "exp", "run", "-S", "dpo.beta=0.5"], root)
    ran = {stage for stage in ["base_model", *DATA_STAGES, *MODEL_STAGES] if f"Running stage '{stage}'" in experiment.stdout}
    # DPO re-runs; a stage after it re-runs only when its inputs changed (DVC compares hashes: a
    # skipped iteration, or a new simulator that happens to write the same sessions, stops the
    # chain there). Nothing before DPO, or outside its descendants, ever re-runs.
    assert "dpo@it1" in ran and ran <= {"dpo@it1", "simulate@it1", "discriminator@it1", "evaluate"}, experiment.stdout[-3000:]
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], root).stdout
    assert "dpo.beta" in shown and "it1.discriminator.overall.accuracy" in shown
    diff = run(["dvc", "params", "diff"], root).stdout
    assert "dpo.beta" in diff and "0.5" in diff
    # The experiment's metrics differ from the committed run's, and `dvc metrics diff` shows it.
    dpo_report = json.loads((root / "reports/dpo/it1.json").read_text())
    assert dpo_report["steps"] >= 2, "the smoke DPO needs 2 steps for beta to change what it logs"
    metrics_diff = run(["dvc", "metrics", "diff", "--json"], root).stdout
    changed = json.loads(metrics_diff)
    assert "final_rewards_chosen" in changed.get("reports/dpo/it1.json", {}), metrics_diff
    shown = run(["dvc", "metrics", "diff"], root).stdout
    assert "reports/dpo/it1.json" in shown and "final_rewards_chosen" in shown
