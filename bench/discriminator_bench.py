"""Benchmark: the discriminator scores every user turn of a session in ONE forward pass, against
re-encoding the session truncated after each user message (one pass per turn).

    python bench/discriminator_bench.py                     # ~2-3 minutes on a 2-core CPU
    python bench/discriminator_bench.py --sessions 6 --threads 1 --view full

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
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from dial import io, paths
from dial.discriminator import DiscriminatorParams, SessionEncoder, forward_logits, new_discriminator
from dial.models import load_tokenizer
from dial.training.common import resolve_precision


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
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
