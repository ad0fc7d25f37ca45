"""DVC stage `dpo@<iteration>`: DPO on the iteration's preference pairs, with the previous
simulator as the reference policy → the next simulator."""

import sys
from pathlib import Path

import typer

from dial import paths
from dial.params import load_params
from dial.pipeline import check_iteration, previous_simulator
from dial.stage import relaunch_under_accelerate, run_stage
from dial.training.dpo import run_dpo


def main(
    iteration: str = typer.Argument(..., help="A DIAL iteration: it1, it2, ..."),
    params_file: Path = Path("params.yaml"),
) -> None:
    params = load_params(params_file)
    check_iteration(iteration, params.dial.iterations)
    if relaunch_under_accelerate(params.training, __file__, sys.argv[1:]):
        return
    run_dpo(
        params.dpo,
        paths.pairs_dir(iteration) / "pairs.parquet",
        paths.BASE_MODEL_DIR,
        paths.simulator_adapter_dir(previous_simulator(iteration)),
        paths.simulator_adapter_dir(iteration),
        paths.dpo_report(iteration),
        paths.dpo_loss_file(iteration),
        # Outside every DVC output (DVC deletes outputs before re-running a stage), so an
        # interrupted run resumes from it.
        paths.dpo_checkpoints(iteration),
    )


if __name__ == "__main__":
    run_stage(main)
