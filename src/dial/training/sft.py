"""SFT of the user simulator (METHOD.md §3): a LoRA adapter on the base model, trained with trl's
`SFTTrainer` on the flipped-dialogue samples, loss on what the real user wrote only.

Two units (`sft.unit`):
- `session` (default): one sequence per session, the session as the simulator reads it (context,
  then every user turn as one assistant message, the chatbot as user) ending in its end sample's
  completion; labels are -100 everywhere except on every user turn and the end
  (`session_sequence`). One forward pass teaches every turn of the session and its ending, in
  their real proportions, where a turn sample pays for the whole prompt to teach one turn: at
  the CPU-sized budget ~8x more supervised turns per token, and the only way the simulator sees
  enough ends and bursts to learn them (bench/README, "What an SFT setting teaches").
- `turn`: trl's conversational prompt-completion format, one sample per user turn: the prompt is
  rendered with the chat template and a generation prompt, the completion is the assistant
  (= simulated user) turn, and trl builds labels that are -100 on every prompt token.

CPU budget knobs (`sft.max_sample_tokens`, `sft.max_train_samples`): over-long sequences are
skipped and counted (never truncated: a cut prompt would teach the wrong context), then a seeded
subset of the rest is drawn (`select_train_sessions`; for turns stratified so that end and burst
samples keep their share of all train samples, `select_train_samples`). Checkpoints go to a folder outside the DVC output, keyed by a hash of the
params, the precision and the input files, so an interrupted `dvc repro` resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from dial import io
from dial.errors import DialError
from dial.models import quiet_peft_deprecation
from dial.params import SftParams
from dial.prompting import DEFAULT_END_MARKER, DEFAULT_MESSAGE_SEPARATOR, parse_user_turn
from dial.sft_samples import ChatRenderer
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


def session_windows(renderer: ChatRenderer, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[list[dict[str, str]]], int]:
    """One session (the system context, then the flipped session, its ending last) as consecutive
    windows of at most `max_tokens` (0: no cap, the whole session), each the context plus a run
    of the session's messages that ends with a user turn (an assistant message) and starts at the
    session's start or right after a user turn: every user turn and the ending is in exactly one
    window, so windows teach them in their real proportions.

    Cut from the end: the last window is as long as fits, so the ending is learned after as much
    of the session as the cap allows, and the short remainder is the session's *start*, where the
    history really is short. (Cut from the start, the ending would sit in the short remainder and
    the simulator would learn to end sessions after a few turns.) A window that does not start the
    session opens mid-session without the messages before it, as a turn sample whose oldest
    history was dropped. Returns (windows in session order, user turns that fit in no window)."""
    system, body = messages[0], messages[1:]

    def fits(start: int, stop: int) -> bool:
        if max_tokens <= 0:
            return True
        text = renderer.tokenizer.apply_chat_template([[system, *body[start:stop]]], tokenize=False)
        return renderer.count(text)[0] <= max_tokens

    starts = [0] + [i + 1 for i, message in enumerate(body[:-1]) if message["role"] == "assistant"]
    windows, unfit = [], 0
    stop = len(body)  # body[-1] is what the user wrote last (a turn or the ending)
    while stop > 0:
        candidates = [start for start in starts if start < stop]
        low, high = 0, len(candidates)  # the earliest candidate that fits: shorter windows fit if longer ones do
        while low < high:
            middle = (low + high) // 2
            if fits(candidates[middle], stop):
                high = middle
            else:
                low = middle + 1
        if low == len(candidates):  # not even the turn alone fits: skip it
            unfit += 1
            stop = candidates[-1]
            continue
        windows.append([system, *body[candidates[low] : stop]])
        stop = candidates[low]
    return windows[::-1], unfit


def split_windows(samples: pd.DataFrame, split: str, tokenizer, max_tokens: int) -> tuple[list[list[dict[str, str]]], int, int]:
    """Every session of `split` (its end sample: prompt + completion is the whole session as the
    simulator writes it) cut into windows of at most `max_tokens` (`session_windows`).
    Returns (windows, user turns that fit in no window, sessions)."""
    renderer = ChatRenderer(tokenizer)
    sessions = samples[(samples["split"] == split) & samples["is_end"]].sort_values("sample_id")
    windows, unfit = [], 0
    for row in sessions.itertuples(index=False):
        messages = json.loads(row.prompt) + [{"role": "assistant", "content": row.completion}]
        found, skipped = session_windows(renderer, messages, max_tokens)
        windows += found
        unfit += skipped
    return windows, unfit, len(sessions)


def seeded_subset(windows: list, n: int, seed: int) -> list:
    """`n` of `windows` (0 or more than there are: all), drawn with `seed`, in their original order."""
    if n <= 0 or n >= len(windows):
        return windows
    order = pd.Series(range(len(windows))).sample(n=n, random_state=seed)
    return [windows[i] for i in sorted(order)]


def select_train_windows(
    samples: pd.DataFrame, params: SftParams, tokenizer, end_marker: str, message_separator: str
) -> tuple[list[list[dict[str, str]]], dict]:
    """The training sequences of `unit: session`, and how they were chosen.

    Every train session is cut into windows of at most `max_sample_tokens` (`split_windows`);
    a seeded subset of `max_train_samples` windows (0: all) is drawn. Each user turn and each
    ending is in exactly one window, so the subset keeps their real proportions up to sampling;
    the report shows the share of end and burst targets among all and among those trained on."""
    renderer = ChatRenderer(tokenizer)
    windows, unfit, n_sessions = split_windows(samples, "train", tokenizer, params.max_sample_tokens)
    kept = seeded_subset(windows, params.max_train_samples, params.seed)

    def taught(chosen: list[list[dict[str, str]]]) -> dict:
        turns = [parse_user_turn(m["content"], end_marker, message_separator) for w in chosen for m in w if m["role"] == "assistant"]
        return {"targets": len(turns), "end": sum(t.ends for t in turns), "burst": sum(len(t.messages) > 1 for t in turns)}

    available, selected = taught(windows), taught(kept)
    counts = {
        "train_sessions": n_sessions,
        "train_windows_available": len(windows),
        "train_windows_used": len(kept),
        "train_turns_in_no_window": unfit,
        "train_samples_available": available["targets"],
        "train_samples_used": selected["targets"],  # supervised targets: user turns and endings
        "train_tokens_per_epoch": int(sum(renderer.count(renderer.tokenizer.apply_chat_template(kept, tokenize=False)))) if kept else 0,
        "shares": {
            kind: {"available": _share(available[kind], available["targets"]), "selected": _share(selected[kind], selected["targets"])}
            for kind in ("end", "burst")
        },
    }
    return kept, counts


def select_eval_windows(samples: pd.DataFrame, params: SftParams, tokenizer) -> list[list[dict[str, str]]]:
    """The held-out curve's sequences: up to `max_eval_windows` seeded windows of valid-split
    sessions, cut like the training windows (the same token cap)."""
    windows, _, _ = split_windows(samples, "valid", tokenizer, params.max_sample_tokens)
    return seeded_subset(windows, params.max_eval_windows, params.seed)


def eval_curve(log_history: list[dict]) -> list[dict]:
    """The held-out curve from the trainer's log: one point per evaluation (step 0 = before
    training), perplexity = exp(mean over windows of each window's mean loss on user turns)."""
    return [
        {"step": step, "loss": round(loss, 6), "perplexity": round(math.exp(loss), 4)}
        for step, loss in dict(logged_losses(log_history, "eval_loss")).items()
    ]


def session_sequence(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a session window in the simulator's format (`simulator_messages`,
    its ending as a last assistant message): labels are -100 except on each assistant message, i.e.
    exactly the tokens trl's prompt-completion format labels when that turn is the completion (its
    text and end-of-turn). Needs a prefix-stable chat template (as turn samples do)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise DialError("chat template is not prefix-stable: a session cannot be trained as one sequence (use sft.unit: turn)")
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [-100] * len(input_ids)
    span_index = 0
    for i, (start, _) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start:
            labels[i] = input_ids[i]
    return input_ids, labels


def session_dataset(windows: list[list[dict[str, str]]], tokenizer):
    """The windows as a pre-tokenized dataset with labels, which trl uses as is."""
    from datasets import Dataset

    input_ids, labels = [], []
    for window in windows:
        ids, window_labels = session_sequence(tokenizer, window)
        input_ids.append(ids)
        labels.append(window_labels)
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels})


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

    arguments = shared_trainer_arguments(params, precision, output_dir)
    if params.eval_steps > 0:
        arguments.update(
            eval_strategy="steps",
            eval_steps=params.eval_steps,
            eval_on_start=True,  # step 0: the base model, where the curve starts
            per_device_eval_batch_size=1,  # no padding: each window's mean loss, then their mean
            save_steps=params.eval_steps,  # the best evaluation must have a checkpoint to go back to
            load_best_model_at_end=params.early_stopping_patience > 0,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
        )
    return SFTConfig(
        **arguments,
        packing=False,
        # turn: trl masks the prompt; session: the dataset carries its own labels (session_dataset).
        completion_only_loss=params.unit == "turn",
    )


def build_sft_trainer(
    params: SftParams,
    train_samples: pd.DataFrame | list,
    base_model_dir: Path,
    output_dir: Path,
    precision: ResolvedPrecision,
    callbacks: Sequence = (),
    compact_lm_head: bool = True,
    eval_windows: list | None = None,
):
    """An `SFTTrainer` with a fresh LoRA adapter on the fp32 base model (checkpoints into `output_dir`).
`train_samples`: turn samples (`unit: turn`) or session windows (`unit: session`);
`eval_windows`: held-out session windows for the curve (`sft.eval_steps`).

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
            train_dataset=(
                session_dataset(train_samples, tokenizer) if params.unit == "session" else prompt_completion_dataset(train_samples)
            ),
            eval_dataset=session_dataset(eval_windows, tokenizer) if eval_windows else None,
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
    end_marker: str = DEFAULT_END_MARKER,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> dict:
    """Stage: SFT samples + base model → LoRA adapter folder, metrics report and loss curve.

    `callbacks` are extra `TrainerCallback`s (tests use one to simulate an interruption);
    `end_marker` and `message_separator` (sft_samples') let the report count what it teaches.
    """
    samples_path, base_model_dir, out_dir = Path(samples_path), Path(base_model_dir), Path(out_dir)
    samples = io.SFT_SAMPLES.read(samples_path)
    if params.unit == "session":
        from dial.models import load_tokenizer

        train_samples, counts = select_train_windows(samples, params, load_tokenizer(base_model_dir), end_marker, message_separator)
        why = f"{counts['train_turns_in_no_window']} user turns fit in no window"
    else:
        train_samples, counts = select_train_samples(samples, params)
        why = f"{counts['train_samples_over_cap_skipped']} samples"
    if len(train_samples) == 0:
        raise DialError(
            f"{samples_path}: nothing left to train SFT on ({counts['train_samples_available']} targets in the train "
            f"split, {why} over sft.max_sample_tokens={params.max_sample_tokens})"
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
        "SFT on %d %s, %d targets (%d tokens/epoch), precision %s, device %s",
        len(train_samples),
        "session windows" if params.unit == "session" else "turn samples",
        counts["train_samples_used"],
        counts["train_tokens_per_epoch"],
        precision,
        training_device(),
    )

    throughput = TokenThroughputCallback(enabled=progress, desc="sft")
    eval_windows = []
    if params.eval_steps > 0:
        from transformers import EarlyStoppingCallback

        from dial.models import load_tokenizer

        eval_windows = select_eval_windows(samples, params, load_tokenizer(base_model_dir))
        if not eval_windows:
            raise DialError(f"{samples_path}: sft.eval_steps is set but the valid split has no session window to evaluate on")
        if params.early_stopping_patience > 0:
            callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience)]
    trainer = build_sft_trainer(
        params, train_samples, base_model_dir, run_dir, precision, [throughput, *callbacks], eval_windows=eval_windows
    )
    if params.unit == "session":
        counts["completion_tokens_per_epoch"] = int(sum(sum(label != -100 for label in labels) for labels in trainer.train_dataset["labels"]))
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    elif eval_windows:
        log.info("held-out curve: %d windows of valid-split sessions, every %d steps", len(eval_windows), params.eval_steps)
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
        "unit": params.unit,
        "processes": int(trainer.args.world_size),  # > 1 under `accelerate launch` (DDP)
    }
    if eval_windows:
        curve = eval_curve(trainer.state.log_history)
        best = min(curve[1:] or curve, key=lambda point: point["loss"])  # the adapter kept: the best trained one
        summary["heldout"] = {
            "windows": len(eval_windows),
            "eval_steps": params.eval_steps,
            "curve": curve,
            "kept_step": best["step"] if params.early_stopping_patience > 0 else summary["steps"],
            "best_step": best["step"],
            "best_perplexity": best["perplexity"],
            "stopped_early": params.early_stopping_patience > 0 and summary["steps"] < int(trainer.state.max_steps),
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
    publish_trained_adapter(trainer, trainer.model, MANIFEST, manifest, out_dir, loss_path, report_path, summary, run_dir)
    log.info(
        "SFT adapter written to %s (%d steps, %d tokens/s)", out_dir, summary["steps"], throughput.tokens_per_second
    )
    return summary
