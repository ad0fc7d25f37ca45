"""`dial overrides`: a params profile (configs/*.yaml) as `-S` flags for `dvc exp run`, or merged
into params.yaml with its comments; invalid profiles are refused before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from dial.cli import app
from dial.params import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def project(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_the_gpu_profile_prints_as_flags_that_dvc_would_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path))
    result = CliRunner().invoke(app, ["overrides", str(REPO_ROOT / "configs" / "gpu.yaml")])
    assert result.exit_code == 0, result.output
    flags = result.stdout.split()
    assert flags.count("-S") == len(flags) // 2
    settings = dict(flag.split("=", 1) for flag in flags[1::2])
    assert settings["simulate.n_contexts"] == "1000" and settings["discriminator.n_train"] == "800"
    assert settings["base_model.name_or_path"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_write_merges_keeps_comments_and_syncs_iterations(tmp_path, monkeypatch):
    root = project(tmp_path)
    monkeypatch.chdir(root)
    (root / "profile.yaml").write_text("dial: {iterations: 3}\nsft: {learning_rate: 5.0e-5}\n")
    result = CliRunner().invoke(app, ["overrides", "profile.yaml", "--write"])
    assert result.exit_code == 0, result.output
    params = load_params(root / "params.yaml")
    assert params.dial.iterations == 3 and params.sft.learning_rate == 5e-5
    assert params.sft.max_train_samples == load_params(REPO_ROOT / "params.yaml").sft.max_train_samples  # the rest untouched
    assert "# Every knob of the pipeline." in (root / "params.yaml").read_text()  # comments kept
    assert "it3" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["dpo"]["foreach"]


def test_an_invalid_profile_changes_nothing(tmp_path, monkeypatch):
    root = project(tmp_path)
    monkeypatch.chdir(root)
    before = (root / "params.yaml").read_text()
    (root / "bad.yaml").write_text("sft: {learning_rte: 1.0}\n")
    result = CliRunner().invoke(app, ["overrides", "bad.yaml", "--write"])
    assert result.exit_code != 0 and "learning_rte" in result.output
    assert (root / "params.yaml").read_text() == before
