"""DVC stage `split`: users into train / valid / test (no user in two splits)."""

from pathlib import Path

from dial import paths
from dial.params import load_params
from dial.split import run_split
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_split(params.split, paths.SCRUBBED_DIR, paths.SPLITS_FILE, paths.SPLIT_REPORT)


if __name__ == "__main__":
    run_stage(main)
