"""Benchmark: batched lockstep rollouts vs the naive one-session-at-a-time loop (issue #3).

Same sessions, same seeds, same models (models/base as the simulator and the hf chatbots of
params.yaml), real held-out contexts from data/contexts. Three engines, measured in one run:

  naive      one session at a time, every turn re-runs the whole prompt
  batched    all sessions of a round in one call, every turn re-runs the whole prompt
  lockstep   batched + prefix reuse (the product: only new tokens are run each turn, sessions
             grounded on one context share its prefill)

Prints generated tokens/s (user + chatbot messages) and the ratio to naive (target >= 5x).

    python bench/simulate_bench.py [--contexts 4] [--turns 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from dial import io, paths
from dial.chatbots.hf import HFChatbot
from dial.simulation.generation import ChatGenerator, load_chat_model
from dial.params import load_params
from dial.simulation.simulate import Simulation, plan_sessions, select_contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    params = load_params()
    simulate = params.simulate.model_copy(update={"n_contexts": args.contexts, "n_simulations": 1, "max_turns": args.turns})
    simulate = simulate.model_copy(update={"decoding": simulate.decoding.model_copy(update={"max_new_tokens": args.max_new_tokens})})
    chatbot_params = [c for c in params.chatbots if c.backend == "hf"]
    chatbot_params = [c.model_copy(update={"decoding": c.decoding.model_copy(update={"max_new_tokens": args.max_new_tokens})}) for c in chatbot_params]

    sessions = io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR))
    messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
    selected = select_contexts(io.CONTEXTS.read(paths.CONTEXTS_FILE), sessions, messages, io.SPLITS.read(paths.SPLITS_FILE), simulate)
    model, tokenizer = load_chat_model(paths.BASE_MODEL_DIR, precision=simulate.precision)
    print(f"{len(selected)} contexts x {len(chatbot_params)} chatbots, {args.turns} turns, "
          f"{args.max_new_tokens} new tokens max, dtype {next(model.parameters()).dtype}, {torch.get_num_threads()} threads")

    results = {}
    for name, batch_size, reuse in (("naive", 1, False), ("batched", 32, False), ("lockstep", 32, True)):
        generator = ChatGenerator(model, tokenizer, batch_size=batch_size, reuse_prefixes=reuse)
        chatbots = [HFChatbot(c, generator) for c in chatbot_params]
        states = plan_sessions(selected, [c.name for c in chatbot_params], "zero-shot", simulate)
        engine = Simulation(generator, chatbots, simulate.model_copy(update={"batch_size": batch_size}))
        started = time.perf_counter()
        engine.run(states, progress=False)
        seconds = time.perf_counter() - started
        tokens = sum(
            sum(meta.get("n_tokens", 0) for meta in state.message_metadata) for state in states
        )
        results[name] = (tokens, seconds, [state.history for state in states])
        print(f"{name:9s} {tokens:6d} generated tokens in {seconds:7.1f} s = {tokens / seconds:7.1f} tok/s  "
              f"(prompt tokens run {generator.tokens_prefilled}, reused {generator.tokens_reused})")
    naive_rate = results["naive"][0] / results["naive"][1]
    for name in ("batched", "lockstep"):
        rate = results[name][0] / results[name][1]
        print(f"{name} / naive: {rate / naive_rate:.2f}x" + ("   target >= 5x: " + ("OK" if rate / naive_rate >= 5 else "MISSED") if name == "lockstep" else ""))
    same = results["naive"][2] == results["lockstep"][2]
    print(f"lockstep sessions identical to naive ones: {same}")


if __name__ == "__main__":
    main()
