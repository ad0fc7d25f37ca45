"""DVC stage `base_model`: the simulator's base checkpoint as a plain transformers folder (models/base)."""

from pathlib import Path

from dial import paths
from dial.models import materialise_base_model
from dial.params import load_params
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    materialise_base_model(params.base_model, paths.BASE_MODEL_DIR)


if __name__ == "__main__":
    run_stage(main)
