"""DVC stage `pairs@<iteration>`: rewards of the previous simulator's sessions under its
discriminator, alternatives at the critical messages, filtered preference pairs."""

from pathlib import Path

import typer

from dial import paths
from dial.pairs import run_pairs
from dial.params import load_params
from dial.pipeline import check_iteration, previous_simulator
from dial.stage import run_stage


def main(
    iteration: str = typer.Argument(..., help="A DIAL iteration: it1, it2, ..."),
    params_file: Path = Path("params.yaml"),
) -> None:
    params = load_params(params_file)
    check_iteration(iteration, params.dial.iterations)
    simulator = previous_simulator(iteration)
    run_pairs(
        params.pairs,
        params.sft_samples.end_marker,
        paths.simulated_dir(simulator),
        paths.CONTEXTS_FILE,
        paths.discriminator_dir(simulator),
        paths.BASE_MODEL_DIR,
        paths.simulator_adapter_dir(simulator),
        paths.pairs_dir(iteration),
        paths.pairs_report(iteration),
        message_separator=params.sft_samples.message_separator,
        simulator_id=simulator,
        simulator_settings=params.simulator,
    )


if __name__ == "__main__":
    run_stage(main)
