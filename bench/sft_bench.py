"""Benchmark: SFT training speed on `models/base` with real samples, against this machine's roofline.

    python bench/sft_bench.py                       # ~4.5 minutes on a 2-core CPU
    python bench/sft_bench.py --steps 8 --max-sample-tokens 768

Needs `models/base` and `data/sft/samples.parquet` (`dvc repro sft_samples`). In one run it prints:

1. Roofline: GFLOP/s of one matmul at the model's MLP shape (2048x576 @ 576x1536) in fp32, bf16,
   and fp32 inputs under bf16 autocast (what bf16 training does).
2. SFT tokens/s: the stage's own trainer (`build_sft_trainer`: trl SFTTrainer + LoRA, batch 1) on
   the same seeded real train samples, the first step not counted, in fp32 (labelled-positions LM
   head, the stage's default on CPU), fp32 with trl's own CPU LM head, and bf16 autocast.
3. Achieved FLOP/s = tokens/s x 4·N and its ratio to the roofline of the same precision (goal ≥ 30%).
   N = the base model's parameters used by every token (all but the embedding matrix, which as the
   tied LM head only sees the ~1% labelled positions). 4·N: forward 2N + backward input-gradients
   2N; the frozen base needs no weight gradients (the standard 6N is for full fine-tuning). LoRA
   and attention-score FLOPs are left out (a few % here), so the ratio is slightly pessimistic.
4. The projected `sft` stage time for token caps and sample counts, to size the CPU defaults.

The machine may be shared: the load average is printed before and after; ratios measured in the
same run are more stable than absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from dial import io, paths
from dial.params import load_params
from dial.training.common import bf16_is_fast, resolve_precision, sha256_dir, training_device
from dial.training.sft import build_sft_trainer, select_train_samples

MLP_SHAPE = (2048, 576, 1536)  # tokens x hidden @ hidden x intermediate (SmolLM2-135M)
STAGE_BUDGET_S = 240.0


def matmul_gflops(device: torch.device, dtype: torch.dtype, autocast: bool, min_seconds: float) -> float:
    """GFLOP/s of `a @ b` at MLP_SHAPE; `autocast`: fp32 inputs under bf16 autocast."""
    m, k, n = MLP_SHAPE
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    if not autocast:
        a, b = a.to(dtype), b.to(dtype)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with context:
        a @ b  # warm-up (oneDNN/MKL pick kernels on the first call)
        sync()
        iterations, started = 0, time.perf_counter()
        while True:
            a @ b
            iterations += 1
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
    return 2 * m * k * n * iterations / elapsed / 1e9


class StepWindow(TrainerCallback):
    """Times optimizer steps after `warmup` ones; stops after `steps` measured steps or `max_seconds`."""

    def __init__(self, warmup: int, steps: int, max_seconds: float) -> None:
        self.warmup, self.steps, self.max_seconds = warmup, steps, max_seconds
        self.marks: list[tuple[int, float, int]] = []  # (step, time, tokens seen) at each step end

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))
        measured = state.global_step - self.warmup
        if measured >= self.steps or (measured >= 1 and self.seconds >= self.max_seconds):
            control.should_training_stop = True

    @property
    def window(self) -> list[tuple[int, float, int]]:
        return [mark for mark in self.marks if mark[0] >= self.warmup]

    @property
    def seconds(self) -> float:
        window = self.window
        return window[-1][1] - window[0][1] if len(window) > 1 else 0.0

    @property
    def tokens(self) -> int:
        window = self.window
        return window[-1][2] - window[0][2] if len(window) > 1 else 0


def measure_training(
    train_samples,
    precision: str,
    compact_lm_head: bool,
    sft_params,
    model_dir: Path,
    warmup: int,
    steps: int,
    max_seconds: float,
) -> dict:
    params = sft_params.model_copy(update={"logging_steps": 10**6, "save_steps": 10**6})
    timer = StepWindow(warmup, steps, max_seconds)
    with tempfile.TemporaryDirectory(prefix="dial-sft-bench-") as scratch:
        started = time.perf_counter()
        trainer = build_sft_trainer(
            params, train_samples, model_dir, Path(scratch), precision, [timer], compact_lm_head=compact_lm_head
        )
        setup_seconds = time.perf_counter() - started
        if warmup == 0:
            timer.marks.append((0, time.perf_counter(), 0))  # measure from the very first step
        trainer.train()
    base = trainer.model.get_base_model()
    per_token_params = sum(
        p.numel() for name, p in base.named_parameters() if "lora_" not in name and "embed_tokens" not in name
    )
    tokens_per_s = timer.tokens / timer.seconds if timer.seconds else float("nan")
    return {
        "tokens_per_s": tokens_per_s,
        "measured_steps": len(timer.window) - 1,
        "tokens": timer.tokens,
        "seconds": timer.seconds,
        "setup_seconds": setup_seconds,
        "per_token_params": per_token_params,
        "gflops": tokens_per_s * 4 * per_token_params / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.BASE_MODEL_DIR)
    parser.add_argument("--samples", type=Path, default=paths.SFT_SAMPLES_FILE)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per mode (batch 1)")
    parser.add_argument("--warmup", type=int, default=1, help="steps not counted")
    parser.add_argument("--max-sample-tokens", type=int, default=1024, help="only samples up to this length")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a mode after this long (slow bf16)")
    parser.add_argument("--skip-trl-head", action="store_true", help="do not measure trl's own CPU LM head")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = training_device()
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"device {device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 in hardware: {bf16_is_fast(device)}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # 1. Roofline
    m, k, n = MLP_SHAPE
    print(f"\n1. matmul roofline at {m}x{k} @ {k}x{n}:")
    roofline = {
        "fp32": matmul_gflops(device, torch.float32, autocast=False, min_seconds=2.0),
        "bf16": matmul_gflops(device, torch.bfloat16, autocast=False, min_seconds=2.0),
        "bf16 autocast": matmul_gflops(device, torch.float32, autocast=True, min_seconds=2.0),
    }
    for name, value in roofline.items():
        print(f"   {name:14s} {value:8.1f} GFLOP/s")

    # 2. Training throughput on the same real samples
    sft_params = load_params("params.yaml").sft.model_copy(
        update={
            "max_sample_tokens": args.max_sample_tokens,
            "max_train_samples": args.warmup + args.steps,
            "batch_size": 1,
        }
    )
    samples = io.SFT_SAMPLES.read(args.samples)
    train_samples, _ = select_train_samples(samples, sft_params)
    lengths = train_samples["n_prompt_tokens"] + train_samples["n_completion_tokens"]
    print(
        f"\n2. SFT training, {len(train_samples)} real train samples ≤ {args.max_sample_tokens} tokens "
        f"(mean {lengths.mean():.0f}), batch 1, LoRA r={sft_params.lora.r} on {sft_params.lora.target_modules}, "
        f"first {args.warmup} step(s) not counted:"
    )
    measured = {"warmup": args.warmup, "steps": args.steps, "max_seconds": args.max_seconds}
    modes = [("fp32", "fp32", True, train_samples, measured)]
    if device.type == "cpu" and not args.skip_trl_head:
        modes.append(("fp32, trl's CPU LM head", "fp32", False, train_samples, measured))
    if bf16_is_fast(device):
        modes.append(("bf16 autocast", "bf16", True, train_samples, measured))
    else:
        # Emulated bf16 runs at a few tokens/s: one step on the shortest sample, no warm-up, is enough.
        shortest = train_samples.loc[[lengths.idxmin()]]
        modes.append(("bf16 autocast", "bf16", True, shortest, {"warmup": 0, "steps": 1, "max_seconds": 0.0}))
        print(f"   (no bf16 hardware: bf16 is measured on one {lengths.min()}-token step only)")
    results = {}
    for name, precision, compact, mode_samples, window in modes:
        result = measure_training(mode_samples, precision, compact, sft_params, args.model, **window)
        results[name] = result
        print(
            f"   {name:24s} {result['tokens_per_s']:7.1f} tokens/s  ({result['tokens']} tokens in "
            f"{result['seconds']:.1f} s over {result['measured_steps']} steps; setup {result['setup_seconds']:.1f} s)",
            flush=True,
        )
    fp32, bf16 = results["fp32"], results["bf16 autocast"]
    print(f"   bf16 / fp32 tokens/s: {bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}")
    if "fp32, trl's CPU LM head" in results:
        trl_head = results["fp32, trl's CPU LM head"]
        print(f"   labelled-positions head / trl's CPU head: {fp32['tokens_per_s'] / trl_head['tokens_per_s']:.2f}x")

    # 3. Achieved FLOP/s
    per_token_params = fp32["per_token_params"]
    print(
        f"\n3. achieved training FLOP/s = tokens/s x 4·N, N = {per_token_params / 1e6:.1f}M parameters per token "
        "(all but the embedding / tied LM head; LoRA and attention scores not counted):"
    )
    for name, result in results.items():
        if name.startswith("bf16") and not bf16_is_fast(device):
            # Emulated bf16: much of the step (LoRA, norms, attention) is not bf16 matmul, so the
            # "roofline" of a bf16 matmul says nothing about it.
            print(f"   {name:24s} {result['gflops']:7.1f} GFLOP/s (emulated bf16: no meaningful roofline ratio)")
            continue
        reference = roofline["bf16 autocast"] if name.startswith("bf16") else roofline["fp32"]
        ratio = result["gflops"] / reference
        print(
            f"   {name:24s} {result['gflops']:7.1f} GFLOP/s = {ratio:5.1%} of its matmul roofline "
            f"({reference:.1f})  goal ≥ 30%: {'OK' if ratio >= 0.30 else 'MISSED'}"
        )

    # 4. Projection for the stage
    auto_name = "bf16 autocast" if resolve_precision("auto", device) == "bf16" else "fp32"
    tokens_per_s = results[auto_name]["tokens_per_s"]
    started = time.perf_counter()
    sha256_dir(args.model)  # the stage hashes the base model for its checkpoint key
    # + ~12 s measured for imports, reading the samples and saving (a 3-step stage run took 29 s, 10 s training)
    overhead = results[auto_name]["setup_seconds"] + (time.perf_counter() - started) + 12.0
    train = samples[samples["split"] == "train"]
    all_lengths = train["n_prompt_tokens"] + train["n_completion_tokens"]
    print(
        f"\n4. projected `sft` stage time with precision auto (= {auto_name} here, {tokens_per_s:.0f} tokens/s, "
        f"~{overhead:.0f} s fixed overhead); budget {STAGE_BUDGET_S:.0f} s:"
    )
    print("   max_sample_tokens  samples ≤ cap  mean tokens  samples in budget  time for all ≤ cap")
    for cap in (512, 768, 1024, 1536, 2048, 0):
        within = all_lengths[all_lengths <= cap] if cap else all_lengths
        fit = max(0, math.floor((STAGE_BUDGET_S - overhead) * tokens_per_s / within.mean()))
        all_seconds = overhead + within.sum() / tokens_per_s
        print(
            f"   {cap or 'no cap':>17}  {len(within):13d}  {within.mean():11.0f}  {min(fit, len(within)):17d}  "
            f"{all_seconds / 60:15.1f} min"
        )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
