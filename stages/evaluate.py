"""DVC stage `evaluate`: judge and measure real and simulated sessions, write the reports."""

from pathlib import Path

from dial import paths
from dial.evaluation.run import run_evaluate
from dial.params import load_params
from dial.pipeline import simulator_ids
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_evaluate(params, simulator_ids(params.dial.iterations), paths.EVALUATION_DIR, paths.REPORTS)


if __name__ == "__main__":
    run_stage(main)
