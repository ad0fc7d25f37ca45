"""DVC stage `discriminator@<simulator>`: a fresh discriminator on real vs this simulator's sessions."""

import sys
from pathlib import Path

import typer

from dial import paths
from dial.discriminator import run_discriminator
from dial.params import load_params
from dial.stage import relaunch_under_accelerate, run_stage


def main(
    simulator: str = typer.Argument(..., help="zero-shot, sft, or a DIAL iteration (it1, it2, ...)"),
    params_file: Path = Path("params.yaml"),
) -> None:
    params = load_params(params_file)
    if relaunch_under_accelerate(params.training, __file__, sys.argv[1:]):
        return
    discriminator = params.discriminator
    if discriminator.max_user_turns == 0:
        # Real sessions run longer than any simulated one: past simulate.max_turns only real user
        # messages would exist, and the turn count alone would give the class away.
        discriminator = discriminator.model_copy(update={"max_user_turns": params.simulate.max_turns})
    if discriminator.generation_cap_tokens == 0:
        # The structure baseline checks how many user messages stop at the simulator's length cap.
        discriminator = discriminator.model_copy(update={"generation_cap_tokens": params.simulate.decoding.max_new_tokens})
    run_discriminator(
        simulator,
        discriminator,
        paths.SCRUBBED_DIR,
        paths.simulated_dir(simulator),
        paths.CONTEXTS_FILE,
        paths.BASE_MODEL_DIR,
        paths.discriminator_dir(simulator),
        paths.discriminator_report(simulator),
        paths.discriminator_scores_file(simulator),
        paths.discriminator_loss_file(simulator),
    )


if __name__ == "__main__":
    run_stage(main)
