"""SFT of the user simulator (METHOD.md §3): a LoRA adapter on the base model, trained with trl's
`SFTTrainer` on the flipped-dialogue samples, loss on the completion (the real user's next
message) only.

The samples are trl's conversational prompt-completion format: the prompt is rendered with the
chat template and a generation prompt, the completion is the assistant (= simulated user) turn,
and trl builds labels that are -100 on every prompt token (`completion_only_loss=True`).

CPU budget knobs (`sft.max_sample_tokens`, `sft.max_train_samples`): over-long samples are skipped
and counted (never truncated: a cut prompt would teach the wrong context), then a seeded subset of
the rest is drawn, stratified so that end and burst samples keep their share of all train samples
(`select_train_samples`). Checkpoints go to a folder outside the DVC output, keyed by a hash of the
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


def sample_stratum(is_end: bool, n_target_messages: int) -> str:
    """The stratum of an SFT sample for the selection: what its target teaches the simulator to
    do. "message": one message; "burst": several messages in one turn; "end": end the
    conversation (the marker alone, or one message then the marker); "burst_end": a burst, then
    the marker."""
    burst = n_target_messages > 1
    if is_end:
        return "burst_end" if burst else "end"
    return "burst" if burst else "message"


def _strata(samples: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [sample_stratum(bool(e), int(n)) for e, n in zip(samples["is_end"], samples["n_target_messages"])],
        index=samples.index,
        dtype=object,
    )


def proportional_quotas(available: dict[str, int], n: int) -> dict[str, int]:
    """n apportioned over the strata in proportion to their `available` counts by largest
    remainders (Hamilton): each quota is its exact share rounded down or up, and they sum to n.
    Remainder ties go to the stratum name first in order."""
    total = sum(available.values())
    quotas = {stratum: n * count // total for stratum, count in available.items()}
    by_remainder = sorted(available, key=lambda stratum: (-(n * available[stratum] % total), stratum))
    for stratum in by_remainder[: n - sum(quotas.values())]:
        quotas[stratum] += 1
    return quotas


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def select_train_samples(samples: pd.DataFrame, params: SftParams) -> tuple[pd.DataFrame, dict]:
    """The train-split samples SFT uses, and how they were chosen.

    Stratified, so that what the simulator learns to do (end, burst: `sample_stratum`) keeps its
    real frequency: end samples have the longest prompts (the whole session), and a token cap or a
    plain subset would select almost none of them. In each stratum the samples over
    `max_sample_tokens` are skipped (counted, never truncated); a seeded subset is then drawn from
    each stratum with a
    quota proportional to the stratum's share of *all* train samples (`proportional_quotas`). The
    total is `max_train_samples` (0: all), lowered if needed to the largest total whose quotas
    every stratum fills under the cap, so the shares hold at the cost of fewer samples. A stratum
    with no sample under the cap cannot be represented: it is reported, logged and left out (the
    other strata keep their shares relative to each other).
    """
    train = samples[samples["split"] == "train"].sort_values("sample_id")
    n_tokens = train["n_prompt_tokens"] + train["n_completion_tokens"]
    over_cap = (n_tokens > params.max_sample_tokens) if params.max_sample_tokens > 0 else n_tokens < 0
    stratum = _strata(train)
    available = {name: int(n) for name, n in sorted(stratum.value_counts().items())}
    under_cap = {name: int((~over_cap & (stratum == name)).sum()) for name in available}
    represented = {name: n for name, n in available.items() if under_cap[name] > 0}
    without_sample_under_cap = sorted(set(available) - set(represented))
    if without_sample_under_cap:
        log.warning("SFT: no sample under sft.max_sample_tokens in stratum/strata %s", without_sample_under_cap)
    total = sum(represented.values())
    requested = params.max_train_samples if params.max_train_samples > 0 else total
    largest_fillable = min((under_cap[name] * total // n for name, n in represented.items()), default=0)
    quotas = proportional_quotas(represented, min(requested, largest_fillable)) if represented else {}
    parts = []
    for name, quota in quotas.items():
        pool = train[~over_cap & (stratum == name)]
        parts.append(pool.sample(n=quota, random_state=params.seed) if quota < len(pool) else pool)
    kept = pd.concat(parts) if parts else train.iloc[:0]
    kept = kept.sort_values("sample_id").reset_index(drop=True)
    selected = {name: int((_strata(kept) == name).sum()) for name in available}
    counts = {
        "train_samples_available": len(train),
        "train_samples_over_cap_skipped": int(over_cap.sum()),
        "train_samples_used": len(kept),
        "train_tokens_per_epoch": int((kept["n_prompt_tokens"] + kept["n_completion_tokens"]).sum()),
        "completion_tokens_per_epoch": int(kept["n_completion_tokens"].sum()),
        "strata": {
            name: {"available": available[name], "under_cap": under_cap[name], "selected": selected[name]}
            for name in available
        },
        "strata_without_sample_under_cap": without_sample_under_cap,
        # What the simulator learns to do, among all train samples and among those trained on.
        "shares": {
            kind: {
                "available": _share(sum(available[name] for name in names), len(train)),
                "selected": _share(sum(selected[name] for name in names), len(kept)),
            }
            for kind, names in (
                ("end", [name for name in available if name in ("end", "burst_end")]),
                ("burst", [name for name in available if name in ("burst", "burst_end")]),
            )
        },
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
