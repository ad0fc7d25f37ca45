"""DVC stage `build_contexts`: hierarchical user context per session, within context.max_tokens."""

from pathlib import Path

from dial import paths
from dial.contexts import run_build_contexts
from dial.params import load_params
from dial.prompting import render_instruction
from dial.stage import run_stage


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    # The instruction names the exact end marker and message separator the simulation parses.
    instruction = render_instruction(
        params.context.instruction, params.sft_samples.end_marker, params.sft_samples.message_separator
    )
    context = params.context.model_copy(update={"instruction": instruction})
    run_build_contexts(context, paths.SCRUBBED_DIR, paths.BASE_MODEL_DIR, paths.CONTEXTS_FILE, paths.CONTEXTS_REPORT)


if __name__ == "__main__":
    run_stage(main)
