"""DPO step of the DIAL loop (METHOD.md §5 step 6; DIAL paper §3.5, table 6): the simulator of
iteration k+1 is simulator k trained with trl's `DPOTrainer` on the discriminator-derived
preference pairs, with simulator k itself as the reference policy π_ref.

Model and reference policy
    Simulators are LoRA adapters on `models/base` (`models/simulator/sft`, `it1`, `it2`, ...). The
    policy is the base model with the previous simulator's adapter loaded *trainable*
    (`PeftModel.from_pretrained(..., is_trainable=True)`), passed with `ref_model=None` and no
    `peft_config`. trl 1.16 then adds a second adapter "ref", a copy of the starting weights
    (`DPOTrainer.__init__`: `model.add_adapter("ref", ...)` + `copy_`), and computes the reference
    log-probs under `use_adapter(model, "ref")`, i.e. with the frozen copy of simulator k, never
    with adapters disabled (which would make the *base model* the reference). The only trl path
    that falls back to the base model (peft 0.17-0.19 with LoRA `target_parameters`) cannot occur
    with our pins, and `build_dpo_trainer` checks that the "ref" copy exists and equals the
    starting adapter, so a future trl change fails loudly instead of training against the wrong
    reference. The saved simulator is the whole trained "default" adapter (the "ref" copy is
    dropped), still one LoRA on the base model; its rank/alpha/modules are the previous adapter's.
    Zero-shot previous simulator (no adapter): a fresh LoRA from `lora` (peft_config); trl's
    reference is then the adapter-disabled model = the base model, which *is* the zero-shot
    simulator.

Data
    `preference_pairs`: one row per pair; `prompt` is the JSON chat (system context + flipped
    history), `chosen`/`rejected` the simulated user's next turn as the simulator writes it (its
    messages joined by the message separator, the end marker last when it ends the conversation;
    `dial.prompting`), trained as is, as one `assistant` turn exactly as in SFT (loss on the turn
    and its end-of-turn tokens only). The pairs stage
    already applied the paper's filter and the token cap; here only a seeded subset of
    `max_train_pairs` is drawn (CPU budget), the rest counted as skipped.

Nothing to learn
    Zero usable pairs is a normal outcome of the paper's filter (r_chosen > 0 > r_rejected): the
    previous simulator is carried forward unchanged (its adapter files byte-identical) with a
    manifest saying `skipped`. If the previous simulator is the zero-shot base model, the output is
    a folder with only the manifest (`adapter: null`), meaning "the base model";
    `resolve_simulator_adapter` maps such a folder to `None` for the loaders.

Checkpoints go outside the DVC output, keyed by a hash of params, precision, pairs, base model and
previous adapter, so an interrupted run resumes where it stopped (as SFT).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd

from dial import io
from dial.errors import DialError
from dial.stage import is_main_process
from dial.models import quiet_peft_deprecation
from dial.params import DpoParams, LoraParams, LossType, Precision, Section  # noqa: F401
from dial.training.common import (
    ResolvedPrecision,
    TokenThroughputCallback,
    checkpoint_run_dir,
    latest_checkpoint,
    logged_losses,
    lora_config,
    parameter_counts,
    publish_trained_adapter,
    quiet_trainer_output,
    resolve_precision,
    run_key,
    shared_trainer_arguments,
    score_labelled_positions_only,
    sha256_dir,
    sha256_files,
    training_device,
    write_loss_csv,
)

log = logging.getLogger(__name__)

MANIFEST = "dial_model.json"
ADAPTER_CONFIG = "adapter_config.json"
REF_ADAPTER = "ref"  # the name trl 1.x gives its frozen copy of the starting adapter

# trl loss types that need nothing beyond beta ("sigmoid" is the paper's DPO).


# --------------------------------------------------------------------------------------------
# Simulator folders
# --------------------------------------------------------------------------------------------


def resolve_simulator_adapter(model_dir: Path) -> Path | None:
    """The LoRA adapter folder of a simulator, or None when the simulator is the base model itself
    (a DPO output carried forward from the zero-shot simulator: a manifest with `adapter: null`)."""
    model_dir = Path(model_dir)
    if (model_dir / ADAPTER_CONFIG).is_file():
        return model_dir
    manifest_path = model_dir / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text(encoding="utf-8")).get("adapter", "") is None:
        return None
    raise DialError(f"{model_dir}: not a simulator folder (no {ADAPTER_CONFIG}, no {MANIFEST} with adapter null)")


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> pd.DataFrame:
    """The preference pairs, schema-checked, with every prompt a list of chat messages."""
    path = Path(path)
    pairs = io.PREFERENCE_PAIRS.read(path)
    for row, (pair_id, prompt) in enumerate(zip(pairs["pair_id"], pairs["prompt"])):
        messages = json.loads(prompt)  # the schema checked it is a JSON list
        well_formed = all(
            isinstance(message, dict) and all(isinstance(message.get(key), str) for key in ("role", "content"))
            for message in messages
        )
        if not (messages and well_formed):
            raise DialError(
                f"{path}: row {row} (pair_id {pair_id!r}), field 'prompt': expected a non-empty JSON list of "
                '{"role", "content"} messages'
            )
    return pairs


def select_train_pairs(pairs: pd.DataFrame, params: DpoParams) -> tuple[pd.DataFrame, dict]:
    """The pairs DPO trains on: all, or a seeded subset of `max_train_pairs`, in `pair_id` order
    (so the choice depends on the pairs, not on the file's row order)."""
    pairs = pairs.sort_values("pair_id", kind="stable")
    kept = pairs
    if 0 < params.max_train_pairs < len(pairs):
        kept = pairs.sample(n=params.max_train_pairs, random_state=params.seed).sort_values("pair_id", kind="stable")
    kept = kept.reset_index(drop=True)
    counts = {
        "pairs_available": len(pairs),
        "pairs_skipped": len(pairs) - len(kept),  # over dpo.max_train_pairs
        "pairs_used": len(kept),
        "pairs_used_by_kind": {str(kind): int(n) for kind, n in sorted(kept["kind"].value_counts().items())},
        # Tokens the policy forward sees per epoch (chosen and rejected, each with the prompt); the
        # reference forward sees as many again, without a backward pass.
        "sequence_tokens_per_epoch": int(
            (2 * kept["prompt_tokens"] + kept["chosen_tokens"] + kept["rejected_tokens"]).sum()
        ),
        "completion_tokens_per_epoch": int((kept["chosen_tokens"] + kept["rejected_tokens"]).sum()),
    }
    return kept, counts


def preference_dataset(pairs: pd.DataFrame):
    """trl's conversational preference dataset: prompt = chat messages, chosen/rejected = the
    simulated user's turn, text as is (separators and end marker included), as the `assistant`
    role of the flipped dialogue."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [json.loads(prompt) for prompt in pairs["prompt"]],
            "chosen": [[{"role": "assistant", "content": text}] for text in pairs["chosen"]],
            "rejected": [[{"role": "assistant", "content": text}] for text in pairs["rejected"]],
        }
    )


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def dpo_config(params: DpoParams, precision: ResolvedPrecision, output_dir: Path):
    """trl's DPOConfig with every default that matters set deliberately from params.

    trl 1.x defaults: bf16=True, gradient checkpointing on, max_length=1024 (silent truncation),
    beta 0.1, lr 1e-6. All set here. No `precompute_ref_log_probs`: it would cache reference
    log-probs in the global datasets cache, outside our run folder.
    """
    from trl import DPOConfig

    return DPOConfig(
        **shared_trainer_arguments(params, precision, output_dir),
        beta=params.beta,
        loss_type=[params.loss_type],
        precompute_ref_log_probs=False,
        sync_ref_model=False,
        disable_dropout=True,
    )


def _check_reference_is_previous_adapter(model) -> None:
    """Fail unless trl built the reference as a frozen copy ("ref") of the starting adapter."""
    import torch

    if REF_ADAPTER not in getattr(model, "peft_config", {}):
        raise DialError(
            "trl's DPOTrainer did not create its 'ref' copy of the previous simulator's adapter: the reference "
            "policy would be the base model, not the previous simulator (trl/peft version change?)"
        )
    parameters = dict(model.named_parameters())
    for name, parameter in parameters.items():
        if f".{REF_ADAPTER}." in name:
            default = parameters[name.replace(f".{REF_ADAPTER}.", ".default.")]
            if parameter.requires_grad or not torch.equal(parameter, default):
                raise DialError(f"trl's reference adapter is not a frozen copy of the previous simulator ({name})")


def build_dpo_trainer(
    params: DpoParams,
    train_pairs: pd.DataFrame,
    base_model_dir: Path,
    previous_adapter_dir: Path | None,
    output_dir: Path,
    precision: ResolvedPrecision,
    callbacks: Sequence = (),
    compact_lm_head: bool = True,
):
    """A `DPOTrainer` whose policy starts from, and whose reference is, the previous simulator
    (base model + `previous_adapter_dir`; None = the base model with a fresh LoRA from `params.lora`).

    `compact_lm_head=False` keeps trl's own LM head on CPU (the benchmark compares the two).
    """
    import datasets
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from dial.models import load_tokenizer

    datasets.disable_progress_bars()  # a few fast map() calls; the training bar is what matters
    tokenizer_dir = previous_adapter_dir if previous_adapter_dir is not None else base_model_dir
    if not (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        tokenizer_dir = base_model_dir
    tokenizer = load_tokenizer(tokenizer_dir)
    # fp32 weights in every precision mode: bf16 means autocast compute, not bf16 storage.
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32, local_files_only=True)
    peft_config = None
    if previous_adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(previous_adapter_dir), is_trainable=True)
    else:
        peft_config = lora_config(params.lora)
    with quiet_peft_deprecation():
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=dpo_config(params, precision, output_dir),
            train_dataset=preference_dataset(train_pairs),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
    if previous_adapter_dir is not None:
        _check_reference_is_previous_adapter(trainer.model)
    quiet_trainer_output(trainer)
    if compact_lm_head and trainer.args.device.type == "cpu":
        score_labelled_positions_only(trainer.model)
    return trainer


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------


def _metric_summary(log_history: list[dict]) -> dict:
    """First/final/mean loss and the final and mean of trl's reward metrics, as logged."""
    summary: dict = {}
    losses = [value for _, value in logged_losses(log_history, "loss")]
    summary["first_train_loss"] = round(losses[0], 6) if losses else None
    summary["final_train_loss"] = round(losses[-1], 6) if losses else None
    summary["mean_train_loss"] = round(sum(losses) / len(losses), 6) if losses else None
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        values = [value for _, value in logged_losses(log_history, key)]
        name = key.replace("/", "_")
        summary[f"final_{name}"] = round(values[-1], 6) if values else None
        summary[f"mean_{name}"] = round(sum(values) / len(values), 6) if values else None
    return summary


def _carry_forward(
    reason: str,
    params: DpoParams,
    base_model_dir: Path,
    previous_dir: Path | None,
    previous_adapter_dir: Path | None,
    out_dir: Path,
    report_file: Path,
    loss_file: Path,
    counts: dict,
    fingerprint: dict,
) -> dict:
    """No pairs to learn from: the new simulator is the previous one, unchanged."""
    log.warning(
        "DPO skipped: %s; the previous simulator (%s) is carried forward unchanged", reason, previous_dir or "base model"
    )
    summary = {
        "skipped": True,
        "reason": reason,
        **counts,
        "epochs": params.epochs,
        "steps": 0,
        **_metric_summary([]),
        "precision": None,
        "trainable_params": 0,
        "total_params": None,
        "processes": 0,  # nothing trained
    }
    manifest = {
        "kind": "simulator",
        "stage": "dpo",
        "skipped": True,
        "reason": reason,
        "base_model": base_model_dir.as_posix(),
        "previous_simulator": previous_dir.as_posix() if previous_dir is not None else None,
        # null: this simulator is the base model itself (the zero-shot simulator carried forward)
        "adapter": "lora" if previous_adapter_dir is not None else None,
        **{key: fingerprint[key] for key in ("base_model_sha256", "previous_adapter_sha256", "pairs_sha256")},
        "params": params.model_dump(mode="json"),
        **counts,
    }
    if not is_main_process():  # under `accelerate launch` the main process writes
        return summary
    with io.atomic_output_dir(out_dir) as staging:
        if previous_adapter_dir is not None:
            for path in sorted(Path(previous_adapter_dir).iterdir()):
                if path.is_file() and path.name != MANIFEST:
                    shutil.copyfile(path, staging / path.name)
        io.write_json_atomic(staging / MANIFEST, manifest)
    write_loss_csv(Path(loss_file), [])
    io.write_json_atomic(report_file, summary)
    return summary


def run_dpo(
    params: DpoParams,
    pairs_file: Path,
    base_model_dir: Path,
    previous_adapter_dir: Path | None,
    out_dir: Path,
    report_file: Path,
    loss_file: Path,
    checkpoint_dir: Path,
    progress: bool = True,
    callbacks: Sequence = (),
) -> dict:
    """Stage: preference pairs + previous simulator → next simulator (LoRA adapter folder), report
    and loss curve.

    `previous_adapter_dir`: the previous simulator's folder (`models/simulator/sft`, `.../it1`, ...),
    or None for the zero-shot base model; a carried-forward "base model" folder counts as None.
    `callbacks` are extra `TrainerCallback`s (tests use one to simulate an interruption).
    """
    pairs_file, base_model_dir, out_dir = Path(pairs_file), Path(base_model_dir), Path(out_dir)
    previous_dir = Path(previous_adapter_dir) if previous_adapter_dir is not None else None
    adapter_dir = resolve_simulator_adapter(previous_dir) if previous_dir is not None else None
    pairs = read_pairs(pairs_file)
    train_pairs, counts = select_train_pairs(pairs, params)
    fingerprint = {
        "params": params.model_dump(mode="json"),
        "pairs_sha256": sha256_files([pairs_file]),
        "base_model_sha256": sha256_dir(base_model_dir),
        "previous_adapter_sha256": sha256_dir(adapter_dir) if adapter_dir is not None else None,
    }
    if train_pairs.empty:
        return _carry_forward(
            "no preference pairs",
            params,
            base_model_dir,
            previous_dir,
            adapter_dir,
            out_dir,
            report_file,
            loss_file,
            counts,
            fingerprint,
        )

    precision = resolve_precision(params.precision)
    fingerprint["precision"] = precision
    run_dir = checkpoint_run_dir(Path(checkpoint_dir), run_key(fingerprint))
    resume_from = latest_checkpoint(run_dir)
    log.info(
        "DPO on %d pairs (%d sequence tokens/epoch) from %s, precision %s, device %s",
        counts["pairs_used"],
        counts["sequence_tokens_per_epoch"],
        previous_dir or "the base model (zero-shot)",
        precision,
        training_device(),
    )

    throughput = TokenThroughputCallback(enabled=progress, desc="dpo")
    trainer = build_dpo_trainer(
        params, train_pairs, base_model_dir, adapter_dir, run_dir, precision, [throughput, *callbacks]
    )
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    with quiet_peft_deprecation():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    model = trainer.model
    if REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)  # the reference copy is not part of the new simulator
    trainable, total = parameter_counts(model)
    adapter_config = model.peft_config["default"]
    summary = {
        "skipped": False,
        "reason": None,
        **counts,
        "epochs": params.epochs,
        "steps": int(trainer.state.global_step),
        **_metric_summary(trainer.state.log_history),
        "precision": precision,
        "trainable_params": trainable,
        "total_params": total,
        "processes": int(trainer.args.world_size),  # > 1 under `accelerate launch` (DDP)
    }
    manifest = {
        "kind": "simulator",
        "stage": "dpo",
        "skipped": False,
        "base_model": base_model_dir.as_posix(),
        "previous_simulator": previous_dir.as_posix() if previous_dir is not None else None,
        # the reference policy π_ref of this DPO step (= the previous simulator)
        "reference": previous_dir.as_posix() if adapter_dir is not None else "base model",
        "adapter": "lora",
        "lora": {"r": adapter_config.r, "alpha": adapter_config.lora_alpha},
        **{key: fingerprint[key] for key in ("base_model_sha256", "previous_adapter_sha256", "pairs_sha256")},
        "params": params.model_dump(mode="json"),
        **summary,
    }
    publish_trained_adapter(trainer, model, MANIFEST, manifest, out_dir, loss_file, report_file, summary, run_dir)
    log.info(
        "DPO adapter written to %s (%d steps, %.0f tokens/s)", out_dir, summary["steps"], throughput.tokens_per_second
    )
    return summary
