"""`dial export SIMULATOR OUT`: a trained simulator as a self-contained Hugging Face checkpoint
that vLLM, `dial serve` or another harness loads like any chat model.

OUT holds the base model with the simulator's LoRA adapter merged in (safetensors), the
tokenizer with the chat template the simulator was trained with, `dial_simulator.json` (the
conventions a caller needs: end marker, message separator, roles), and a model card (`README.md`)
with the training data, the params and the realism metrics the pipeline measured.

The simulator reads the *flipped* dialogue: the system message is the user's context, the
chatbot's messages have role `user` and the simulated user's own earlier turns role `assistant`.
Its reply is the user's next turn: one or more messages joined by the separator, and the end
marker when the user ends the conversation (`dial.prompting.parse_user_turn` reads it back).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from dial import io
from dial.errors import DialError

log = logging.getLogger(__name__)

CONVENTIONS_FILE = "dial_simulator.json"
CARD_METRICS = (  # (metrics.json key under the simulator, what it is, digits)
    ("perplexity.value", "held-out perplexity of real user messages (lower = closer to real users)", 2),
    ("discriminator.overall.accuracy", "discriminator accuracy on held-out messages (50 % = indistinguishable)", 3),
    ("discriminator.overall.balanced_accuracy", "discriminator balanced accuracy", 3),
    ("discriminator.structure_baseline.accuracy", "structure-only baseline accuracy (turn and message counts, lengths)", 3),
    ("structure.messages_per_user_turn", "messages per user turn", 2),
    ("structure.words_per_user_message", "words per user message", 1),
    ("structure.user_ended_share", "share of sessions the user ends", 3),
    ("truncation.user.share", "share of user messages cut at the token budget", 3),
)


def _metric_lines(metrics: dict, simulator: str) -> list[str]:
    lines = []
    for key, label, digits in CARD_METRICS:
        value = metrics.get(f"{simulator}.{key}")
        if value is None:
            continue
        low, high = metrics.get(f"{simulator}.{key}_ci_low"), metrics.get(f"{simulator}.{key}_ci_high")
        interval = f" (95 % interval {low:.{digits}f}–{high:.{digits}f})" if low is not None and high is not None else ""
        real = metrics.get(f"real.{key}")
        beside = f"; real users {real:.{digits}f}" if isinstance(real, (int, float)) else ""
        lines.append(f"| {label} | {value:.{digits}f}{interval}{beside} |")
    return lines


def model_card(simulator: str, conventions: dict, params: dict, data_report: dict | None, metrics: dict) -> str:
    """The model card: what the simulator is, how to call it, what it was trained on, how real it measured."""
    data = params.get("data", {})
    training = {name: params.get(name) for name in ("sft", "dpo", "dial", "discriminator", "pairs") if name in params}
    metric_lines = _metric_lines(metrics, simulator)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [user-simulator, dial]",
        "---",
        "",
        f"# DIAL user simulator `{simulator}`",
        "",
        "A language model that plays the **user** of a chatbot, trained by the DIAL pipeline (SFT on real",
        "conversation logs, then DIAL iterations: discriminator rewards → preference pairs → DPO).",
        "It is meant for testing chatbots offline, not for talking to people.",
        "",
        "## How to call it",
        "",
        "Send the *flipped* dialogue as chat messages:",
        "",
        "- `system`: the user's context (who they are, what the session is about);",
        "- the chatbot's messages as role `user`, the simulated user's earlier turns as role `assistant`;",
        "- the model writes the user's next turn as the assistant message.",
        "",
        f"A turn may hold several messages (a burst) joined by `{conventions['message_separator']}`; the user ends the",
        f"conversation with `{conventions['end_marker']}` (alone or after a last message). Split the reply on the",
        "separator, and stop the session when the marker appears.",
        "",
        "```bash",
        "vllm serve OUT --served-model-name simulator       # or: python -m dial.simulation.serve --model-dir OUT",
        "```",
        "",
        "## Training data",
        "",
        f"- Source: `{data.get('source', '?')}`" + (f" ({data_report['sessions_sampled']} sessions, {data_report['messages']} messages)"
                                                  if data_report else ""),
        "- PII was scrubbed (presidio) before training; placeholders like `<PERSON_1>` stand for removed names.",
        "",
        "## Realism, as the pipeline measured it",
        "",
    ]
    if metric_lines:
        lines += ["| metric | value |", "|---|---|", *metric_lines, ""]
    else:
        lines += ["Not measured yet (run the `evaluate` stage).", ""]
    lines += ["## Training params", "", "```json", json.dumps(training, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def export_simulator(
    simulator: str,
    out_dir: Path,
    base_model_dir: Path,
    adapter_dir: Path | None,
    params: dict,
    end_marker: str,
    message_separator: str,
    metrics_file: Path | None = None,
    data_report_file: Path | None = None,
) -> Path:
    """Write the merged checkpoint of `simulator` (zero-shot: the base model as is) to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    from dial.models import load_tokenizer

    out_dir = Path(out_dir)
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise DialError(f"{adapter_dir}: no LoRA adapter for simulator {simulator!r} (run `dvc repro` first)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DialError(f"{out_dir}: exists and is not empty (choose a new folder)")
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32, local_files_only=True)
    tokenizer_dir = adapter_dir if adapter_dir is not None and (Path(adapter_dir) / "tokenizer.json").is_file() else base_model_dir
    if adapter_dir is not None:
        from peft import PeftModel

        from dial.models import quiet_peft_deprecation

        with quiet_peft_deprecation():
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer = load_tokenizer(tokenizer_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise DialError(f"{tokenizer_dir}: the tokenizer has no chat template; the simulator's prompts cannot be rendered")
    conventions = {
        "simulator": simulator,
        "end_marker": end_marker,
        "message_separator": message_separator,
        "roles": {"system": "the user's context", "user": "the chatbot", "assistant": "the simulated user"},
    }
    metrics = json.loads(Path(metrics_file).read_text()) if metrics_file and Path(metrics_file).is_file() else {}
    data_report = json.loads(Path(data_report_file).read_text()) if data_report_file and Path(data_report_file).is_file() else None
    with io.atomic_output_dir(out_dir) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        io.write_json_atomic(staging / CONVENTIONS_FILE, conventions)
        (staging / "README.md").write_text(model_card(simulator, conventions, params, data_report, metrics), encoding="utf-8")
        if adapter_dir is not None and (Path(adapter_dir) / "dial_model.json").is_file():
            shutil.copy2(Path(adapter_dir) / "dial_model.json", staging / "dial_model.json")
    log.info("exported simulator %s to %s", simulator, out_dir)
    return out_dir
