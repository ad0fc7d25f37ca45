"""Benchmark: the 8 alternatives of a critical point generated and scored as one batch (what the
`pairs` step does) against one by one (generate one, score one, repeat).

    python bench/alternatives_bench.py                   # ~3-5 minutes on a 2-core CPU
    python bench/alternatives_bench.py --points 2 --threads 1

Needs `models/base` (SmolLM2-135M-Instruct; `python stages/base_model.py` builds it). Critical
points are real sessions from `data/scrubbed/` + `data/contexts/contexts.parquet` when present
(the user message `--user-turn` of sessions that have one, drawn with `--seed`, whose context and
history fit the discriminator's budget), else constructed ESConv-like contexts and histories. The
simulator is the base model (zero-shot; an adapter would be merged, same cost), the discriminator
a fresh one on the base model (LoRA + new score head; a trained one costs the same). Decoding:
T 1.0, top-p 0.95, 40 new tokens (the simulator's); precision `auto`.

Three ways, each over the same points with the same per-alternative seeds, after one warm-up:

* one by one: for each alternative, `ChatGenerator.generate` of one row (the prompt prefilled
  every time), then `forward_logits` of that one session;
* batched: `sample_alternatives` (8 rows in one call, the prompt prefilled once) then
  `score_alternatives` with the shared history run once (`share_prefix`, the stage default);
* batched, full sequences: the same, scoring every alternative as a whole session in
  `forward_logits` batches (`share_prefix: false`).

Prints absolute times, generated tokens, the ratio one-by-one / batched (target >= 4x), whether
the alternatives are the same texts (same seeds; identical prompts need no padding), and the
largest reward difference between the methods (float rounding only).
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
from dial.simulation.generation import ChatGenerator
from dial.pairs import SCORED, CriticalPoint, PairsParams, candidate_text, sample_alternatives, score_alternatives
from dial.simulation.simulate import stable_seed
from dial.training.common import resolve_precision

ESCONV_LIKE = [
    ("I have been feeling really anxious about my exams lately", "That sounds stressful. What worries you most?"),
    ("mostly that I will fail and disappoint my parents", "It is understandable to feel that pressure."),
    ("yeah. I can't sleep much either", "Lack of sleep can make anxiety worse. Have you tried anything?"),
]


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def real_points(n: int, user_turn: int, encoder: SessionEncoder, seed: int) -> list[CriticalPoint]:
    sessions = io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR))
    messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
    contexts = io.CONTEXTS.read(paths.CONTEXTS_FILE)
    context_of = dict(zip(contexts["session_id"], contexts["context_text"]))
    ordered = messages.sort_values(["session_id", "turn_index"])
    points = []
    for session_id, group in ordered.groupby("session_id", sort=True):
        if session_id not in context_of or session_id not in set(sessions["session_id"]):
            continue
        turns = list(zip(group["role"], group["text"]))
        users = [i for i, (role, _) in enumerate(turns) if role == "user"]
        if len(users) < user_turn:
            continue
        at = users[user_turn - 1]
        # Room for an alternative of up to 40 tokens within the discriminator budget.
        encoded = encoder.encode(context_of[session_id], turns[: at + 1])
        if encoded.n_scored != user_turn or len(encoded.input_ids) > encoder.max_tokens - 60:
            continue
        points.append(CriticalPoint(session_id, at, user_turn, "highest", 0.0, context_of[session_id], tuple(turns[:at])))
    random.Random(seed).shuffle(points)
    return sorted(points[:n], key=lambda p: p.session_id)


def constructed_points(n: int) -> list[CriticalPoint]:
    points = []
    for i in range(n):
        context = (
            "You are role-playing a real person (the USER) who is chatting with a supporter. Write only the user's "
            f"next message.\nProfile: emotion anxiety, problem academic pressure, user {i}.\n"
            "Current session: the user is worried about final exams and sleeps badly. " * 8
        )
        exchanges = ESCONV_LIKE[: 1 + i % 3]
        history = tuple(item for user, supporter in exchanges for item in (("user", user), ("assistant", supporter)))
        points.append(CriticalPoint(f"constructed-{i}", len(history), len(history) // 2 + 1, "highest", 0.0, context, history))
    return points


def one_by_one(generator, model, tokenizer, encoder, points, params, precision, end_marker):
    texts, rewards, tokens = [], [], 0
    for point in points:
        prompt = point.prompt()
        for j in range(params.n_alternatives):
            seed = stable_seed(params.seed, point.session_id, point.turn_index, j)
            generated = generator.generate([prompt], params.decoding, [seed])[0]
            tokens += generated.n_tokens
            text, status = candidate_text(generated.text, end_marker)
            texts.append(text)
            if status is not None:
                rewards.append(np.nan)
                continue
            item = encoder.encode(point.context_text, [*point.history, ("user", text)])
            if item.n_scored != point.user_turn_number:
                rewards.append(np.nan)
                continue
            values = forward_logits(model, tokenizer, [item], 1, precision)[0]
            rewards.append(values[-1] - values[-2])
    return texts, np.array(rewards, dtype=float), tokens


def batched(generator, model, tokenizer, encoder, points, params, precision, end_marker, share_prefix):
    candidates, _ = sample_alternatives(generator, points, params, end_marker, progress=False)
    scored = score_alternatives(model, tokenizer, encoder, points, candidates, params.score_batch_size, precision, share_prefix)
    rewards = scored["reward"].where(scored["status"].isin([SCORED, "duplicate"])).to_numpy(dtype=float)
    return list(scored["text"]), rewards, int(scored["n_tokens"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.BASE_MODEL_DIR)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--user-turn", type=int, default=2, help="the critical user message (1-based) of real sessions")
    parser.add_argument("--alternatives", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=2048, help="discriminator budget")
    # 1: with 2 OpenMP threads and another busy process on a 2-core machine, inference stalls badly.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-marker", default="<|endconversation|>")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"load average before: {load_average()}  (torch threads: {args.threads})")
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no model (run `python stages/base_model.py` or `dvc repro base_model`)")
    started = time.perf_counter()
    generator = ChatGenerator.load(args.model, None, "auto", batch_size=32)
    model = new_discriminator(args.model, DiscriminatorParams(max_tokens=args.max_tokens)).eval()
    tokenizer = generator.tokenizer
    precision = resolve_precision("auto", torch.device("cpu"))
    encoder = SessionEncoder(tokenizer, "user_only", args.max_tokens)
    print(f"models loaded in {time.perf_counter() - started:.1f} s; precision {precision}")

    if paths.CONTEXTS_FILE.is_file() and paths.sessions_file(paths.SCRUBBED_DIR).is_file():
        points = real_points(args.points, args.user_turn, encoder, args.seed)
        source = "real sessions (data/scrubbed + data/contexts)"
    else:
        points = []
    if not points:
        points, source = constructed_points(args.points), "constructed ESConv-like contexts"
    params = PairsParams(n_alternatives=args.alternatives, seed=args.seed, score_batch_size=args.alternatives)
    prompt_tokens = [len(ids) for ids in generator.prompt_ids([p.prompt() for p in points])]
    print(f"{len(points)} critical points from {source}; simulator prompt tokens {prompt_tokens}; "
          f"{args.alternatives} alternatives each, up to {params.decoding.max_new_tokens} new tokens")

    warm = constructed_points(1)
    warm_params = params.model_copy(update={"n_alternatives": 2})
    batched(generator, model, tokenizer, encoder, warm, warm_params, precision, args.end_marker, True)

    timings = {}
    started = time.perf_counter()
    texts_1, rewards_1, tokens_1 = one_by_one(generator, model, tokenizer, encoder, points, params, precision, args.end_marker)
    timings["one by one"] = (time.perf_counter() - started, tokens_1)
    started = time.perf_counter()
    texts_b, rewards_b, tokens_b = batched(generator, model, tokenizer, encoder, points, params, precision, args.end_marker,
                                           True)
    timings["batched (shared prefix)"] = (time.perf_counter() - started, tokens_b)
    started = time.perf_counter()
    texts_f, rewards_f, tokens_f = batched(generator, model, tokenizer, encoder, points, params, precision, args.end_marker,
                                           False)
    timings["batched (full sequences)"] = (time.perf_counter() - started, tokens_f)

    print()
    for name, (seconds, tokens) in timings.items():
        print(f"{name:26s}: {seconds:8.2f} s  ({seconds / len(points):6.2f} s per point, {tokens} tokens generated)")
    base = timings["one by one"][0]
    for name in ("batched (shared prefix)", "batched (full sequences)"):
        ratio = base / timings[name][0]
        print(f"ratio one-by-one / {name}: {ratio:.2f}x  (target >= 4x: {'MET' if ratio >= 4 else 'NOT MET'})")
    same = sum(a == b for a, b in zip(texts_1, texts_b))
    print(f"identical alternatives one-by-one vs batched: {same}/{len(texts_1)}; vs full sequences: "
          f"{sum(a == b for a, b in zip(texts_b, texts_f))}/{len(texts_b)}")
    rows = zip(rewards_1, rewards_b, rewards_f, texts_1, texts_b)
    both = [(a, b, c) for a, b, c, t1, tb in rows if t1 == tb and np.isfinite(a)]
    if both:
        values = np.array(both)
        print(f"max |reward difference| (same texts): one-by-one vs shared prefix {np.abs(values[:, 0] - values[:, 1]).max():.2e}, "
              f"shared prefix vs full sequences {np.abs(values[:, 1] - values[:, 2]).max():.2e}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
