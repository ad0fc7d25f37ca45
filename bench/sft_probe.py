"""Probe: what an SFT setting teaches the simulator, measured on held-out real turns.

    python bench/sft_probe.py                                    # the params.yaml SFT, ~1.5 min
    python bench/sft_probe.py paper='{"learning_rate": 5e-5}' fast='{"learning_rate": 2e-4}'

Needs `models/base` and `data/sft/samples.parquet` (`dvc repro sft_samples`). Each variant is
`name=JSON` (overrides of the `sft` section of params.yaml; none: the section as it is). For each,
in one run: train the SFT adapter on the stage's own samples and code (`run_sft`, into a scratch
folder), then let the simulator write the next user turn of held-out test-split prompts with the
simulation's own decoding (`simulate.decoding`, one seed per prompt, the same for every variant):

- `end recall`: of the real turns where the user ended the session, how many the simulator ended
  (the end marker, `dial.prompting.is_end_of_conversation`, the simulation's rule);
- `false ends`: of the turns where the real user went on, how many the simulator ended;
- `bursts`: generated turns of two or more messages (`parse_user_turn`), beside the real share;
- `cut`: turns that reached `max_new_tokens` without an end of turn (`truncated` in simulation);
- `words`: mean words per generated turn, beside the real turns' mean.

Counts carry a 95 % Wilson interval: with 64 prompts a difference under ~15 points is noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from dial import io, paths
from dial.evaluation.stats import wilson_interval
from dial.simulation.generation import ChatGenerator
from dial.params import load_params
from dial.prompting import parse_user_turn
from dial.training.common import resolve_precision
from dial.training.sft import run_sft


def probe_prompts(samples: pd.DataFrame, n_end: int, n_other: int, max_prompt_tokens: int, seed: int) -> pd.DataFrame:
    """Held-out (test split) samples: up to `n_end` where the real user ended, `n_other` where not."""
    test = samples[(samples["split"] == "test") & (samples["n_prompt_tokens"] <= max_prompt_tokens)].sort_values("sample_id")
    ends, others = test[test["is_end"]], test[~test["is_end"]]
    ends = ends.sample(n=min(n_end, len(ends)), random_state=seed)
    others = others.sample(n=min(n_other, len(others)), random_state=seed)
    return pd.concat([ends, others]).reset_index(drop=True)


def share(count: int, n: int) -> str:
    interval = wilson_interval(count, n)
    if interval is None:
        return f"{count}/{n}"
    low, high = interval
    return f"{count}/{n} ({100 * low:.0f}-{100 * high:.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", help='name=JSON overrides of params.yaml sft, e.g. fast=\'{"learning_rate": 2e-4}\'')
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--n-end", type=int, default=24)
    parser.add_argument("--n-other", type=int, default=40)
    parser.add_argument("--max-prompt-tokens", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, nargs="*", default=[],
                        help="generation budgets to probe each variant with (default: simulate.decoding's)")
    args = parser.parse_args()

    params = load_params(args.params)
    variants = [item.split("=", 1) for item in args.variants] or [["params.yaml", "{}"]]
    samples = io.SFT_SAMPLES.read(paths.SFT_SAMPLES_FILE)
    prompts = probe_prompts(samples, args.n_end, args.n_other, args.max_prompt_tokens, args.seed)
    real_words = prompts.loc[~prompts["is_end"], "completion"].str.split().str.len().mean()
    real_bursts = int((prompts["n_target_messages"] > 1).sum())
    decoding = params.simulate.decoding
    budgets = args.max_new_tokens or [decoding.max_new_tokens]
    print(f"{len(prompts)} held-out prompts ({int(prompts['is_end'].sum())} real ends), decoding {decoding.model_dump()}, "
          f"precision {resolve_precision(params.sft.precision)}; real turns: {real_words:.1f} words, "
          f"bursts {share(real_bursts, len(prompts))}")
    print(f"{'variant':<14} {'budget':>6} {'train s':>7} {'loss':>6}  {'end recall':<16} {'false ends':<16} {'bursts':<16} {'cut':<16} {'words':>5}")
    for name, overrides in variants:
        sft = params.sft.model_copy(update=json.loads(overrides))
        with tempfile.TemporaryDirectory(prefix="sft_probe_") as scratch:
            out = Path(scratch)
            started = time.perf_counter()
            report = run_sft(sft, paths.SFT_SAMPLES_FILE, paths.BASE_MODEL_DIR, out / "model", out / "sft.json",
                             out / "loss.csv", out / "checkpoints", progress=False)
            seconds = time.perf_counter() - started
            generator = ChatGenerator.load(paths.BASE_MODEL_DIR, out / "model", precision=params.simulate.precision)
            results = {
                budget: generator.generate([json.loads(p) for p in prompts["prompt"]], decoding.model_copy(update={"max_new_tokens": budget}),
                                           [args.seed + i for i in range(len(prompts))])
                for budget in budgets
            }
        for budget, generated in results.items():
            turns = [parse_user_turn(g.text, params.sft_samples.end_marker, params.sft_samples.message_separator) for g in generated]
            ended = pd.Series([turn.ends for turn in turns])
            bursts = sum(len(turn.messages) > 1 for turn in turns)
            cut = sum(g.hit_max_tokens for g in generated)
            words = sum(len(g.text.split()) for g in generated) / len(generated)
            is_end = prompts["is_end"]
            print(f"{name:<14} {budget:6d} {seconds:7.0f} {report['final_train_loss']:6.3f}  "
                  f"{share(int(ended[is_end].sum()), int(is_end.sum())):<16} {share(int(ended[~is_end].sum()), int((~is_end).sum())):<16} "
                  f"{share(bursts, len(generated)):<16} {share(cut, len(generated)):<16} {words:5.1f}", flush=True)


if __name__ == "__main__":
    main()
