"""DVC stage `sft_samples`: flipped-dialogue training samples (one per user message + end)."""

from pathlib import Path

from dial import paths
from dial.params import load_params
from dial.sft_samples import run_sft_samples
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_sft_samples(
        params.sft_samples,
        paths.SCRUBBED_DIR,
        paths.CONTEXTS_FILE,
        paths.SPLITS_FILE,
        paths.BASE_MODEL_DIR,
        paths.SFT_SAMPLES_FILE,
        paths.SFT_SAMPLES_REPORT,
    )


if __name__ == "__main__":
    run_stage(main)
