"""DVC stage `build_contexts`: hierarchical user context per session, within context.max_tokens."""

from pathlib import Path

from dial import paths
from dial.contexts import run_build_contexts
from dial.params import load_params
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    run_build_contexts(params.context, paths.SCRUBBED_DIR, paths.BASE_MODEL_DIR, paths.CONTEXTS_FILE, paths.CONTEXTS_REPORT)


if __name__ == "__main__":
    run_stage(main)
