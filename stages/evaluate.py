"""DVC stage `evaluate`: judge and measure real and simulated sessions, write the reports."""

from pathlib import Path

from dial import paths
from dial.evaluation.run import run_evaluate
from dial.params import load_params
from dial.pipeline import check_dvc_yaml, simulator_ids
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    check_dvc_yaml(Path("dvc.yaml"), params.dial.iterations, params.dial.zero_shot)
    run_evaluate(params, simulator_ids(params.dial.iterations, params.dial.zero_shot), paths.EVALUATION_DIR, paths.REPORTS)


if __name__ == "__main__":
    run_stage(main)
