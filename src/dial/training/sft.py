"""SFT of the user simulator (METHOD.md §3): a LoRA adapter on the base model, trained with trl's
`SFTTrainer` on the flipped-dialogue samples, loss on the completion (the real user's next
message) only.

The samples are trl's conversational prompt-completion format: the prompt is rendered with the
chat template and a generation prompt, the completion is the assistant (= simulated user) turn,
and trl builds labels that are -100 on every prompt token (`completion_only_loss=True`).

CPU budget knobs (`sft.max_sample_tokens`, `sft.max_train_samples`): over-long samples are skipped
and counted (never truncated: a cut prompt would teach the wrong context), then a seeded subset of
the rest is drawn. Checkpoints go to a folder outside the DVC output, keyed by a hash of the
params, the precision and the input files, so an interrupted `dvc repro` resumes where it stopped.
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
from dial.models import quiet_peft_deprecation
from dial.params import SftParams
from dial.training.common import (
    ResolvedPrecision,
    TokenThroughputCallback,
    checkpoint_run_dir,
    latest_checkpoint,
    logged_losses,
    lora_config,
    parameter_counts,
    quiet_trainer_output,
    resolve_precision,
    run_key,
    save_adapter,
    shared_trainer_arguments,
    score_labelled_positions_only,
    sha256_dir,
    sha256_files,
    training_device,
    write_loss_csv,
)

log = logging.getLogger(__name__)

MANIFEST = "dial_model.json"


def select_train_samples(samples: pd.DataFrame, params: SftParams) -> tuple[pd.DataFrame, dict]:
    """The train-split samples SFT uses, and how they were chosen.

    First the token cap (samples over `max_sample_tokens` are skipped and counted), then a seeded
    subset of `max_train_samples` of the rest, so the number trained on (the time budget) is exact.
    """
    train = samples[samples["split"] == "train"].sort_values("sample_id")
    n_tokens = train["n_prompt_tokens"] + train["n_completion_tokens"]
    over_cap = (n_tokens > params.max_sample_tokens) if params.max_sample_tokens > 0 else n_tokens < 0
    kept = train[~over_cap]
    if 0 < params.max_train_samples < len(kept):
        kept = kept.sample(n=params.max_train_samples, random_state=params.seed).sort_values("sample_id")
    kept = kept.reset_index(drop=True)
    counts = {
        "train_samples_available": len(train),
        "train_samples_over_cap_skipped": int(over_cap.sum()),
        "train_samples_used": len(kept),
        "train_tokens_per_epoch": int((kept["n_prompt_tokens"] + kept["n_completion_tokens"]).sum()),
        "completion_tokens_per_epoch": int(kept["n_completion_tokens"].sum()),
    }
    return kept, counts


def prompt_completion_dataset(samples: pd.DataFrame):
    """trl's conversational prompt-completion dataset: prompt = chat messages, completion = the
    simulated user's turn (the `assistant` role of the flipped dialogue)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [json.loads(prompt) for prompt in samples["prompt"]],
            "completion": [[{"role": "assistant", "content": completion}] for completion in samples["completion"]],
        }
    )


def sft_config(params: SftParams, precision: ResolvedPrecision, output_dir: Path):
    """trl's SFTConfig with every default that matters set deliberately from params.

    trl 1.x defaults differ from transformers: bf16=True (which fails on a CPU-only machine unless
    use_cpu is set), gradient checkpointing on, max_length=1024 (silent truncation), lr 2e-5.
    All are set here.
    """
    from trl import SFTConfig

    return SFTConfig(
        **shared_trainer_arguments(params, precision, output_dir),
        packing=False,
        completion_only_loss=True,
    )


def build_sft_trainer(
    params: SftParams,
    train_samples: pd.DataFrame,
    base_model_dir: Path,
    output_dir: Path,
    precision: ResolvedPrecision,
    callbacks: Sequence = (),
    compact_lm_head: bool = True,
):
    """An `SFTTrainer` with a fresh LoRA adapter on the fp32 base model (checkpoints into `output_dir`).

    `compact_lm_head=False` keeps trl's own LM head on CPU (the benchmark compares the two).
    """

    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from dial.models import load_tokenizer

    datasets.disable_progress_bars()  # a handful of fast map() calls; the training bar is what matters
    tokenizer = load_tokenizer(base_model_dir)
    # fp32 weights in every precision mode: bf16 means autocast compute, not bf16 storage.
    model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32, local_files_only=True)
    with quiet_peft_deprecation():
        trainer = SFTTrainer(
            model=model,
            args=sft_config(params, precision, output_dir),
            train_dataset=prompt_completion_dataset(train_samples),
            processing_class=tokenizer,
            peft_config=lora_config(params.lora),
            callbacks=list(callbacks),
        )
    quiet_trainer_output(trainer)
    if compact_lm_head and trainer.args.device.type == "cpu":
        score_labelled_positions_only(trainer.model)
    return trainer


def run_sft(
    params: SftParams,
    samples_path: Path,
    base_model_dir: Path,
    out_dir: Path,
    report_path: Path,
    loss_path: Path,
    checkpoint_dir: Path,
    progress: bool = True,
    callbacks: Sequence = (),
) -> dict:
    """Stage: SFT samples + base model → LoRA adapter folder, metrics report and loss curve.

    `callbacks` are extra `TrainerCallback`s (tests use one to simulate an interruption).
    """
    samples_path, base_model_dir, out_dir = Path(samples_path), Path(base_model_dir), Path(out_dir)
    samples = io.SFT_SAMPLES.read(samples_path)
    train_samples, counts = select_train_samples(samples, params)
    if train_samples.empty:
        raise DialError(
            f"{samples_path}: no train samples left for SFT ({counts['train_samples_available']} in the train split, "
            f"{counts['train_samples_over_cap_skipped']} over sft.max_sample_tokens={params.max_sample_tokens})"
        )
    precision = resolve_precision(params.precision)
    fingerprint = {
        "params": params.model_dump(mode="json"),
        "precision": precision,
        "samples_sha256": sha256_files([samples_path]),
        "base_model_sha256": sha256_dir(base_model_dir),
    }
    run_dir = checkpoint_run_dir(Path(checkpoint_dir), run_key(fingerprint))
    resume_from = latest_checkpoint(run_dir)
    log.info(
        "SFT on %d samples (%d tokens/epoch), precision %s, device %s",
        counts["train_samples_used"],
        counts["train_tokens_per_epoch"],
        precision,
        training_device(),
    )

    throughput = TokenThroughputCallback(enabled=progress, desc="sft")
    trainer = build_sft_trainer(params, train_samples, base_model_dir, run_dir, precision, [throughput, *callbacks])
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    trainable, total = parameter_counts(trainer.model)
    losses = [loss for _, loss in logged_losses(trainer.state.log_history)]
    summary = {
        **counts,
        "epochs": params.epochs,
        "steps": int(trainer.state.global_step),
        "final_train_loss": round(losses[-1], 6) if losses else None,
        "mean_train_loss": round(sum(losses) / len(losses), 6) if losses else None,
        "precision": precision,
        "trainable_params": trainable,
        "total_params": total,
        "max_sample_tokens": params.max_sample_tokens,
        "max_train_samples": params.max_train_samples,
    }
    manifest = {
        "kind": "sft",
        "base_model": base_model_dir.as_posix(),
        "adapter": "lora",
        "lora": params.lora.model_dump(mode="json"),
        "base_model_sha256": fingerprint["base_model_sha256"],
        "samples_sha256": fingerprint["samples_sha256"],
        "seed": params.seed,
        **summary,
    }
    with io.atomic_output_dir(out_dir) as staging:
        save_adapter(trainer.model, trainer.processing_class, staging)
        io.write_json_atomic(staging / MANIFEST, manifest)
    write_loss_csv(Path(loss_path), trainer.state.log_history)
    io.write_json_atomic(report_path, summary)
    shutil.rmtree(run_dir, ignore_errors=True)  # published: the checkpoints are no longer needed
    log.info(
        "SFT adapter written to %s (%d steps, %d tokens/s)", out_dir, summary["steps"], throughput.tokens_per_second
    )
    return summary
