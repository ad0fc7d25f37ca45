"""DVC stage `sft`: LoRA SFT of the user simulator on the flipped-dialogue samples."""

import sys
from pathlib import Path

from dial import paths
from dial.params import load_params
from dial.stage import relaunch_under_accelerate, run_stage
from dial.training.sft import run_sft


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    if relaunch_under_accelerate(params.training, __file__, sys.argv[1:]):
        return
    run_sft(
        params.sft,
        paths.SFT_SAMPLES_FILE,
        paths.BASE_MODEL_DIR,
        paths.SFT_MODEL_DIR,
        paths.SFT_REPORT,
        paths.SFT_LOSS,
        # Outside every DVC output (DVC deletes outputs before re-running a stage), so an
        # interrupted run resumes from it.
        paths.SFT_CHECKPOINTS,
        end_marker=params.sft_samples.end_marker,
        message_separator=params.sft_samples.message_separator,
    )


if __name__ == "__main__":
    run_stage(main)
