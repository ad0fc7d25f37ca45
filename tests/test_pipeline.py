"""The DIAL iteration chain and `dial pipeline`'s rewrite of dvc.yaml."""

from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from dial.cli import app
from dial.errors import DialError
from dial.params import load_params
from dial.pipeline import (
    check_dvc_yaml,
    check_iteration,
    foreach_items,
    previous_simulator,
    simulator_ids,
    stage_items,
    sync_dvc_yaml,
)


def test_chain():
    assert simulator_ids(3) == ["zero-shot", "sft", "it1", "it2", "it3"]
    assert [previous_simulator(f"it{k}") for k in (1, 2, 3)] == ["sft", "it1", "it2"]
    with pytest.raises(DialError, match="not a DIAL iteration"):
        previous_simulator("sft")
    with pytest.raises(DialError, match="not a DIAL iteration"):
        previous_simulator("it0")


def test_check_iteration_names_the_fix():
    check_iteration("it2", 2)
    with pytest.raises(DialError, match="dial.iterations=2.*dial pipeline"):
        check_iteration("it3", 2)


def test_shipped_dvc_yaml_matches_shipped_params(repo_root):
    dial = load_params(repo_root / "params.yaml").dial
    assert stage_items(repo_root / "dvc.yaml") == foreach_items(dial.iterations, dial.zero_shot)
    check_dvc_yaml(repo_root / "dvc.yaml", dial.iterations, dial.zero_shot)


def test_zero_shot_baseline_can_be_left_out(repo_root, tmp_path):
    assert simulator_ids(2, zero_shot=False) == ["sft", "it1", "it2"]
    items = foreach_items(1, zero_shot=False)
    assert list(items["simulate"]) == list(items["discriminator"]) == ["sft", "it1"]
    assert items["pairs"] == items["dpo"] == {"it1": {"previous": "sft"}}
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(repo_root / "dvc.yaml", dvc_yaml)
    sync_dvc_yaml(dvc_yaml, 1, zero_shot=True)
    assert list(stage_items(dvc_yaml)["simulate"]) == ["zero-shot", "sft", "it1"]
    check_dvc_yaml(dvc_yaml, 1, zero_shot=True)
    # Evaluating without the stages that made a simulator's sessions (or with stages params dropped):
    with pytest.raises(DialError, match=r"zero-shot, sft, it1 but params.yaml .*dial.zero_shot=false.*`dial pipeline`"):
        check_dvc_yaml(dvc_yaml, 1, zero_shot=False)
    with pytest.raises(DialError, match=r"asks for zero-shot, sft, it1, it2"):
        check_dvc_yaml(dvc_yaml, 2, zero_shot=True)
    sync_dvc_yaml(dvc_yaml, 1, zero_shot=False)
    check_dvc_yaml(dvc_yaml, 1, zero_shot=False)


@pytest.mark.parametrize("more", [1, 2, 4])  # iterations beyond the shipped dvc.yaml's
def test_sync_rewrites_only_the_items(repo_root, tmp_path, more):
    iterations = load_params(repo_root / "params.yaml").dial.iterations + more
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(repo_root / "dvc.yaml", dvc_yaml)
    original = yaml.safe_load(dvc_yaml.read_text())
    assert sync_dvc_yaml(dvc_yaml, iterations) is True
    rewritten = yaml.safe_load(dvc_yaml.read_text())
    assert stage_items(dvc_yaml) == foreach_items(iterations)
    # Everything but the foreach items is unchanged, and comments survive the round trip.
    for name, stage in original["stages"].items():
        if "foreach" in stage:
            assert rewritten["stages"][name]["do"] == stage["do"]
        else:
            assert rewritten["stages"][name] == stage
    assert "# One stage per simulator" in dvc_yaml.read_text()
    assert rewritten["stages"]["dpo"]["foreach"][f"it{iterations}"] == {"previous": previous_simulator(f"it{iterations}")}
    assert sync_dvc_yaml(dvc_yaml, iterations) is False  # idempotent


def test_sync_back_is_byte_identical(repo_root, tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(repo_root / "dvc.yaml", dvc_yaml)
    dial = load_params(repo_root / "params.yaml").dial
    sync_dvc_yaml(dvc_yaml, dial.iterations + 2, not dial.zero_shot)
    sync_dvc_yaml(dvc_yaml, dial.iterations, dial.zero_shot)
    assert dvc_yaml.read_text() == (repo_root / "dvc.yaml").read_text()


def test_cli_check_and_rewrite(repo_root, tmp_path):
    dvc_yaml, params = tmp_path / "dvc.yaml", tmp_path / "params.yaml"
    shutil.copy(repo_root / "dvc.yaml", dvc_yaml)
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["dial"]["iterations"] += 1  # one more than the shipped dvc.yaml lists
    params.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    args = ["--params-file", str(params), "--dvc-yaml", str(dvc_yaml)]
    result = runner.invoke(app, ["pipeline", "--check", *args])
    assert result.exit_code == 1 and "dial pipeline" in result.output
    result = runner.invoke(app, ["pipeline", *args])
    assert result.exit_code == 0, result.output
    last = raw["dial"]["iterations"]
    assert f"it{last}" in result.output and f"it{last + 1}" not in result.output
    assert runner.invoke(app, ["pipeline", "--check", *args]).exit_code == 0
