"""Helpers shared by the training stages (SFT, DPO): precision, LoRA, progress,
checkpoints kept across interrupted runs, atomic model folders and the loss curve.

Nothing here assumes a CPU or a GPU: the device is whatever is present (CUDA if available), and
`precision: auto` picks bf16 only where the hardware computes it fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import types
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from dial.io import write_text_atomic
from dial.params import LoraParams, Precision

log = logging.getLogger(__name__)

ResolvedPrecision = Literal["bf16", "fp32"]

# A checkpoint folder is complete once the Trainer wrote its state file (it is written last).
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------


def training_device() -> torch.device:
    """The device the HF Trainer will train on: CUDA when present, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware on `device` (CUDA with bf16; a CPU with AMX or AVX512-BF16).

    On other CPUs torch still computes bf16, but emulated: measured ~5-50x slower than fp32 on an
    AVX2-only EPYC, so `auto` must not pick it there.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Private but present since torch 2.3; a torch without them is treated as "no bf16 hardware".
        checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check() for check in checks if check is not None)
    return False


def resolve_precision(precision: Precision, device: torch.device | None = None) -> ResolvedPrecision:
    """`auto` → bf16 autocast where the device computes bf16 fast, fp32 otherwise; `bf16`/`fp32` force one.

    bf16 here always means autocast: the weights (and the LoRA adapter) stay fp32.
    """
    device = device or training_device()
    if precision == "fp32":
        return "fp32"
    fast = bf16_is_fast(device)
    if precision == "bf16":
        if not fast:
            log.warning(
                "precision bf16 forced on %s without bf16 hardware: it works, but much slower than fp32", device
            )
        return "bf16"
    return "bf16" if fast else "fp32"


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def lora_config(params: LoraParams):
    """A peft LoRA config for a causal LM from the typed params."""
    from peft import LoraConfig

    target_modules = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def score_labelled_positions_only(model) -> None:
    """Make trl's fused LM head project only the positions that have a label (CPU speed-up, same loss).

    trl 1.16 patches `model.forward(..., fused_lm_head=True)` to return per-token log-probs; off
    Triton devices (i.e. on CPU) it projects *every* position through the LM head (3 GEMMs of
    hidden x 49k vocabulary per token, plus softmax passes), although the prompt positions carry
    no label. With completion-only loss ~1% of the positions are labelled, so that head was ~30%
    of a step. This re-patches the same entry point to score the labelled positions alone and
    returns trl's own output type, so `SFTTrainer.compute_loss` / `DPOTrainer._compute_loss` and their
    metrics are unchanged.
    Call it after the trainer is built (trl patches in its constructor). Not needed on CUDA,
    where trl's Triton kernel already scores only labelled positions.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    trl_forward = target.forward  # trl's fused forward: falls through to the original without fused_lm_head

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or labels is None:
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        mask = targets != -100
        valid_targets = targets[mask]
        logits = self.get_output_embeddings()(hidden[mask]).float()
        log_softmax = torch.log_softmax(logits, dim=-1)
        token_log_probs = log_softmax.gather(-1, valid_targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():  # metrics only (mean_logits: DPOTrainer's logits/chosen, logits/rejected)
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            is_top1 = logits.argmax(-1) == valid_targets
            mean_logits = logits.mean(-1)

        def per_position(values: torch.Tensor) -> torch.Tensor:
            # masked_scatter keeps the graph connected even when no position is labelled
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_position(token_log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=per_position(entropy),
            mean_logits=per_position(mean_logits),
            is_top1=per_position(is_top1),
            label_mask=mask,
        )

    target.forward = types.MethodType(forward, target)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights counted once."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    return trainable, total


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class TokenThroughputCallback(TrainerCallback):
    """A tqdm bar over optimizer steps showing trained tokens/s and the last loss; losses are also
    logged (stderr). Needs `include_num_input_tokens_seen="non_padding"` in the training args.

    Timings live here and in the log only, never in tracked reports (they differ on every run).
    """

    def __init__(self, enabled: bool = True, desc: str = "train") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: tqdm | None = None
        self.tokens = 0  # trained in this process (a resumed run counts from where it resumed)
        self.seconds = 0.0
        self._start_tokens = 0
        self._start_step = 0
        self._start_time = 0.0
        self._last_loss: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step", disable=not self.enabled
        )
        self._start_tokens = state.num_input_tokens_seen
        self._start_step = state.global_step
        self._start_time = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.tokens = state.num_input_tokens_seen - self._start_tokens
        self.seconds = time.perf_counter() - self._start_time
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            postfix = {"tok/s": f"{self.tokens_per_second:.0f}"}
            if self._last_loss is not None:
                postfix["loss"] = f"{self._last_loss:.4f}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_loss = float(logs["loss"])
            if self.bar is not None:
                self.bar.set_postfix({"tok/s": f"{self.tokens_per_second:.0f}", "loss": f"{self._last_loss:.4f}"})
            log.info("step %d/%d: loss %.4f", state.global_step, state.max_steps, self._last_loss)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
        log.info(
            "%s: %d tokens in %.1f s (%.0f tokens/s) over steps %d..%d",
            self.desc,
            self.tokens,
            self.seconds,
            self.tokens_per_second,
            self._start_step,
            state.global_step,
        )


def quiet_trainer_output(trainer) -> None:
    """Drop transformers' own progress bar / stdout log printer (the throughput bar replaces them)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# --------------------------------------------------------------------------------------------
# Checkpoints that survive an interrupted run
# --------------------------------------------------------------------------------------------


def sha256_files(paths: list[Path]) -> str:
    """One digest over the names and bytes of `paths` (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(directory: Path) -> str:
    """Digest of every file in `directory` (sorted, not recursive): identifies a model folder."""
    return sha256_files(sorted(path for path in Path(directory).iterdir() if path.is_file()))


def run_key(fingerprint: dict) -> str:
    """Short stable id of everything that determines a training run's weights."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


RUN_LOCK = ".in-use"
_held_locks: dict[Path, int] = {}  # run folder -> open file descriptor holding its lock (this process)


def _lock_run_dir(run_dir: Path) -> None:
    """Hold a shared lock on `run_dir` until `release_run_dir` or the process ends (the OS drops
    it then, even after a crash), so another run never deletes a run in progress. Shared: the
    processes of one distributed run (and identical runs) use the folder together."""
    import fcntl

    if run_dir in _held_locks:
        return
    fd = os.open(run_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held_locks[run_dir] = fd


def release_run_dir(run_dir: Path) -> None:
    fd = _held_locks.pop(Path(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing drops the lock


def _in_use_elsewhere(run_dir: Path) -> bool:
    import fcntl

    if run_dir in _held_locks or not (run_dir / RUN_LOCK).exists():
        return False
    fd = os.open(run_dir / RUN_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def publish_trained_adapter(trainer, model, manifest_name: str, manifest: dict, out_dir: Path, loss_file: Path,
                            report_file: Path, report: dict, run_dir: Path) -> None:
    """The end of an SFT or DPO run: the adapter folder (atomically, with its manifest), the loss
    curve and the report, written by the main process only (under DDP every process holds the same
    model); then the run's checkpoints are removed, once no process can still read them."""
    from dial import io

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        with io.atomic_output_dir(out_dir) as staging:
            save_adapter(model, trainer.processing_class, staging)
            io.write_json_atomic(staging / manifest_name, manifest)
        write_loss_csv(Path(loss_file), trainer.state.log_history)
        io.write_json_atomic(report_file, report)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        shutil.rmtree(run_dir, ignore_errors=True)  # published: the checkpoints are no longer needed
    release_run_dir(run_dir)


def checkpoint_run_dir(checkpoint_dir: Path, key: str) -> Path:
    """The folder for run `key` under `checkpoint_dir`, locked by this process; checkpoints of
    other runs (other params or data) are removed, since they can never be resumed into this one,
    unless another process is using them (two experiments sharing `.dial/`)."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(checkpoint_dir.iterdir()):
        if stale.is_dir() and stale.name != key:
            if _in_use_elsewhere(stale):
                log.info("keeping checkpoints of a run in progress in another process: %s", stale)
                continue
            release_run_dir(stale)
            log.info("removing checkpoints of another run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    run_dir = checkpoint_dir / key
    run_dir.mkdir(exist_ok=True)
    _lock_run_dir(run_dir)
    return run_dir


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step complete checkpoint in `run_dir`; incomplete ones (interrupted mid-save) are removed."""
    complete: list[tuple[int, Path]] = []
    for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / TRAINER_STATE).is_file():
            complete.append((int(step), path))
        else:
            log.info("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return max(complete)[1] if complete else None


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def save_adapter(model, tokenizer, out_dir: Path) -> None:
    """The LoRA adapter (adapter_config.json + adapter_model.safetensors) and the tokenizer,
    byte-identical for the same weights (DVC caches on it)."""
    model.save_pretrained(out_dir)
    # peft stores target_modules ("all-linear" resolved) from a set: its order follows Python's hash
    # seed, so it changes from process to process unless sorted.
    config_path = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is (as in dial.models)
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out_dir)


def logged_losses(log_history: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of every log entry that has `key`, in step order."""
    return sorted((int(entry["step"]), float(entry[key])) for entry in log_history if key in entry)


def write_loss_csv(path: Path, log_history: list[dict]) -> list[tuple[int, float]]:
    """The loss curve for `dvc plots`: `step,loss` rows with fixed decimals and no timings, so
    reruns give byte-identical files."""
    train = logged_losses(log_history, "loss")
    lines = ["step,loss"] + [f"{step},{loss:.6f}" for step, loss in train]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return train


def shared_trainer_arguments(params, precision: ResolvedPrecision, output_dir: Path) -> dict:
    """The Trainer arguments SFT and DPO set alike, from their params sections (same field names):
    schedule, precision, device, seeds, logging and checkpoints. Samples arrive within budget
    (skipped upstream, never truncated), so no max_length."""
    device = training_device()
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # transformers 5: a float < 1 is a ratio (warmup_ratio is gone)
        max_grad_norm=params.max_grad_norm,
        weight_decay=params.weight_decay,
        bf16=precision == "bf16",  # autocast; the weights stay fp32
        fp16=False,
        use_cpu=device.type == "cpu",
        # transformers 5 renamed gradient_checkpointing; the new name wins over trl's old-name default (True).
        activation_checkpointing=params.gradient_checkpointing,
        seed=params.seed,
        data_seed=params.seed,
        max_length=None,
        dataset_num_proc=None,
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=1,  # resuming needs only the latest
        report_to="none",
        disable_tqdm=True,  # TokenThroughputCallback shows the bar
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=device.type == "cuda",
        eval_strategy="no",
    )
