"""Benchmark: the discriminator scores every user turn of a session in ONE forward pass, against
re-encoding the session truncated after each user message (one pass per turn).

    python bench/discriminator_bench.py                     # ~2-3 minutes on a 2-core CPU
    python bench/discriminator_bench.py --sessions 6 --threads 1 --view full
    python bench/discriminator_bench.py --train-sessions 16   # + training throughput (~3 minutes more)

Needs `models/base`, `data/scrubbed/` and `data/contexts/contexts.parquet` (read only). Real
sessions with at least `--min-user-turns` user messages are drawn (seeded) among those whose
context and first `--max-user-turns` user messages fit in `--max-tokens`; each is encoded as the
discriminator stage encodes it (`SessionEncoder`, capped at `--max-user-turns` user messages).
The discriminator is a fresh one on the base model (LoRA + new score head; the cost of a trained
one is the same). Both methods run batch 1, inference mode, fp32 (or bf16 autocast when
`resolve_precision("auto")` picks it), after one warm-up pass.

Prints the absolute times, tokens processed, the time ratio (per-turn / one-pass), the mean
number of user turns, whether ratio >= turns/2 (the target), and the largest difference between
the two methods' logits (causal attention: they must agree to float precision).

With `--train-sessions N`: one epoch of the stage's own training loop (`train_loop`, the
`discriminator` params of params.yaml: 12 of 30 layers, LoRA, batch 2, bf16 autocast where fast) on N qualifying sessions
(labels alternate), printing training tokens/s, the padding the length-bucketed batches leave
against shuffled ones, and achieved FLOP/s as a share of the roofline measured in the same run
(a 2048³ matmul in the autocast precision). Training FLOPs per token = 2 × forward: the forward
pass and the gradients of the activations; the frozen weights get no gradient (LoRA), so the
textbook 6 × parameters would overstate the work done.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from dial import io, paths
from dial.discriminator import (
    REAL,
    SIMULATED,
    DiscriminatorParams,
    SessionEncoder,
    epoch_batches,
    forward_logits,
    new_discriminator,
    train_loop,
)
from dial.models import load_tokenizer
from dial.params import load_params
from dial.training.common import resolve_precision
from roofline import forward_flops_per_token, matmul_roofline, precision_label


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.BASE_MODEL_DIR)
    parser.add_argument("--scrubbed", type=Path, default=paths.SCRUBBED_DIR)
    parser.add_argument("--contexts", type=Path, default=paths.CONTEXTS_FILE)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--min-user-turns", type=int, default=3)
    parser.add_argument("--max-user-turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--view", choices=["full", "user_only"], default="user_only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-sessions", type=int, default=0, help="also time one training epoch on this many sessions")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"load average before: {load_average()}  (torch threads: {args.threads})")
    sessions = io.SESSIONS.read(paths.sessions_file(args.scrubbed))
    messages = io.MESSAGES.read(paths.messages_file(args.scrubbed))
    contexts = io.CONTEXTS.read(args.contexts)
    tokenizer = load_tokenizer(args.model)
    encoder = SessionEncoder(tokenizer, args.view, args.max_tokens, args.max_user_turns)

    context_of = dict(zip(contexts["session_id"], contexts["context_text"]))
    ordered = messages.sort_values(["session_id", "turn_index"])
    turns_of = {sid: list(zip(g["role"], g["text"])) for sid, g in ordered.groupby("session_id", sort=True)}
    candidates = []
    for session_id in sorted(set(sessions["session_id"]) & set(context_of) & set(turns_of)):
        encoded = encoder.encode(context_of[session_id], turns_of[session_id], session_id=session_id)
        if encoded.n_scored >= args.min_user_turns and encoded.n_scored == min(len(encoded.user_turn_indices), args.max_user_turns):
            candidates.append(encoded)
    if not candidates:
        raise SystemExit("no real session qualifies: lower --min-user-turns or raise --max-tokens")
    chosen = sorted(random.Random(args.seed).sample(candidates, min(args.sessions, len(candidates))), key=lambda e: e.session_id)
    print(f"{len(candidates)} qualifying real sessions; benchmarking {len(chosen)} ({args.view} view, max_tokens {args.max_tokens})")

    started = time.perf_counter()
    model = new_discriminator(args.model, DiscriminatorParams(view=args.view, max_tokens=args.max_tokens)).eval()
    precision = resolve_precision("auto", torch.device("cpu"))
    print(f"model loaded in {time.perf_counter() - started:.1f} s; precision {precision}")

    # Per-turn inputs: the session cut after each user message (exactly what one pass reads at p_t).
    per_turn = []
    for encoded in chosen:
        cut = [
            encoder.encode(context_of[encoded.session_id], turns_of[encoded.session_id][: turn_index + 1])
            for turn_index in encoded.user_turn_indices[: encoded.n_scored]
        ]
        per_turn.append(cut)

    forward_logits(model, tokenizer, [chosen[0]], batch_size=1, precision=precision)  # warm-up

    started = time.perf_counter()
    one_pass = forward_logits(model, tokenizer, chosen, batch_size=1, precision=precision)
    one_pass_s = time.perf_counter() - started

    started = time.perf_counter()
    separate = [forward_logits(model, tokenizer, cut, batch_size=1, precision=precision) for cut in per_turn]
    per_turn_s = time.perf_counter() - started

    max_diff = 0.0
    for logits, cut_logits in zip(one_pass, separate):
        reencoded = np.array([values[-1] for values in cut_logits])
        max_diff = max(max_diff, float(np.abs(logits[1:] - reencoded).max()))

    turns = np.array([encoded.n_scored for encoded in chosen])
    one_pass_tokens = sum(len(encoded.input_ids) for encoded in chosen)
    per_turn_tokens = sum(len(item.input_ids) for cut in per_turn for item in cut)
    ratio = per_turn_s / one_pass_s
    print()
    print(f"sessions: {len(chosen)}; user turns per session: mean {turns.mean():.2f} (min {turns.min()}, max {turns.max()})")
    print(f"one pass per session : {one_pass_s:8.2f} s  {one_pass_tokens:7d} tokens  {one_pass_tokens / one_pass_s:7.1f} tokens/s")
    print(f"re-encode per turn   : {per_turn_s:8.2f} s  {per_turn_tokens:7d} tokens  {per_turn_tokens / per_turn_s:7.1f} tokens/s")
    print(f"ratio (per-turn / one-pass): {ratio:.2f}x time, {per_turn_tokens / one_pass_tokens:.2f}x tokens")
    print(f"target ratio >= mean turns / 2 = {turns.mean() / 2:.2f}: {'MET' if ratio >= turns.mean() / 2 else 'NOT MET'}")
    print(f"max |logit one-pass - logit re-encoded| = {max_diff:.2e}")
    if args.train_sessions:
        train_throughput(args, candidates, tokenizer)
    print(f"load average after: {load_average()}")


def padded_tokens(items, batches) -> int:
    return sum(len(batch) * max(len(items[i].input_ids) for i in batch) for batch in batches)


def train_throughput(args, candidates, tokenizer) -> None:
    params = load_params().discriminator.model_copy(
        update={"view": args.view, "max_tokens": args.max_tokens, "max_user_turns": args.max_user_turns, "epochs": 1}
    )
    chosen = sorted(random.Random(args.seed + 1).sample(candidates, min(args.train_sessions, len(candidates))), key=lambda e: e.session_id)
    items = [dataclasses.replace(item, label=REAL if k % 2 == 0 else SIMULATED) for k, item in enumerate(chosen)]
    precision = resolve_precision(params.precision, torch.device("cpu"))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    roofline = matmul_roofline(dtype)
    model = new_discriminator(args.model, params)
    real_tokens = sum(len(item.input_ids) for item in items)
    bucketed = padded_tokens(items, epoch_batches(items, params.batch_size, 0))
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    shuffled = padded_tokens(items, [order[k : k + params.batch_size] for k in range(0, len(order), params.batch_size)])
    train_loop(model, tokenizer, items[: params.batch_size], params, precision, progress=False)  # warm-up step
    model = new_discriminator(args.model, params)
    started = time.perf_counter()
    train_loop(model, tokenizer, items, params, precision, progress=False)
    seconds = time.perf_counter() - started
    roofline = max(roofline, matmul_roofline(dtype))  # the machine's speed swings: the higher of before and after
    mean_length = real_tokens / len(items)
    flops = 2 * forward_flops_per_token(model, mean_length / 2)
    layers = model.config.num_hidden_layers
    print()
    print(f"training: {len(items)} sessions, {real_tokens} tokens (mean {mean_length:.0f}), batch {params.batch_size}, "
          f"{layers} layers, {precision_label(dtype)}; roofline (higher of before/after) {roofline / 1e9:.0f} GFLOP/s")
    print(f"padding: length-bucketed batches {bucketed / real_tokens - 1:.1%} extra tokens, shuffled {shuffled / real_tokens - 1:.1%}")
    rate = real_tokens / seconds
    print(f"one epoch in {seconds:.1f} s: {rate:.0f} tokens/s, {rate * flops / 1e9:.0f} GFLOP/s "
          f"= {rate * flops / roofline:.1%} of the roofline (target >= 30%)")


if __name__ == "__main__":
    main()
