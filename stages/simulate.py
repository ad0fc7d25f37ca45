"""DVC stage `simulate@<simulator>`: the simulator converses with every configured chatbot."""

from pathlib import Path

import typer

from dial import paths
from dial.params import load_params
from dial.simulation.simulate import run_simulate
from dial.stage import run_stage


def main(
    simulator: str = typer.Argument(..., help="zero-shot, sft, or a DIAL iteration (it1, it2, ...)"),
    params_file: Path = Path("params.yaml"),
) -> None:
    params = load_params(params_file)
    run_simulate(
        simulator,
        params.simulate,
        params.chatbots,
        params.sft_samples.end_marker,
        paths.SCRUBBED_DIR,
        paths.CONTEXTS_FILE,
        paths.SPLITS_FILE,
        paths.BASE_MODEL_DIR,
        paths.simulator_adapter_dir(simulator),
        paths.simulated_dir(simulator),
        paths.simulate_report(simulator),
        paths.simulate_resume_file(simulator),
        message_separator=params.sft_samples.message_separator,
        simulator_settings=params.simulator,
    )


if __name__ == "__main__":
    run_stage(main)
