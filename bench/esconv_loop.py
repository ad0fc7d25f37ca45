"""Real-data check (issue #4): the whole DIAL loop on ESConv, the mental-health support corpus.

    python bench/esconv_loop.py                      # ~25 minutes on a 2-core CPU
    python bench/esconv_loop.py --max-sessions 400 --iterations 2

Runs `dvc repro` (every stage, stage by stage) in a scratch copy of the repository with
`data.source: esconv` read from ../shared/datasets/esconv (CC BY-NC: read in place, never copied)
and the shipped CPU-sized params otherwise, plus the overrides below; then prints, per simulator
(zero-shot, sft, it1..itK): discriminator accuracy with its interval, the structure-only baseline
beside it, held-out perplexity, termination F1, the share of simulated user messages cut at the
token cap, pairs kept per iteration, and lexical diversity next to the real users'.

ESConv sessions are one per seeker (no multi-session histories), so contexts are the seeker's
emotion / problem / situation; the `replay` chatbot replays the real supporter.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from dial.workspace import copy_project, repro_timed, stage_order

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esconv", type=Path, default=REPO.parent / "shared" / "datasets" / "esconv")
    parser.add_argument("--max-sessions", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="copy reports/ here afterwards")
    args = parser.parse_args()
    if not args.esconv.is_dir():
        raise SystemExit(f"ESConv not found at {args.esconv}")
    override = {
        "data": {"source": "esconv", "path": str(args.esconv.resolve()), "max_sessions": args.max_sessions},
        "dial": {"iterations": args.iterations, "zero_shot": True},  # the baseline, whatever params.yaml says
    }
    with tempfile.TemporaryDirectory(prefix="dial-esconv-") as scratch:
        root = copy_project(REPO, Path(scratch), override)
        timings = repro_timed(root, stage_order(root))
        reports = root / "reports"
        metrics = json.loads((reports / "metrics.json").read_text())
        simulators = ["zero-shot", "sft", *[f"it{k}" for k in range(1, args.iterations + 1)]]
        discriminators = {s: json.loads((reports / "discriminator" / f"{s}.json").read_text()) for s in simulators}
        pairs = {s: json.loads((reports / "pairs" / f"{s}.json").read_text()) for s in simulators[2:]}
        dpo = {s: json.loads((reports / "dpo" / f"{s}.json").read_text()) for s in simulators[2:]}
        data = json.loads((reports / "data.json").read_text())
        if args.keep:
            import shutil

            shutil.copytree(reports, args.keep, dirs_exist_ok=True)

    print(f"ESConv: {data['sessions_sampled']} sessions, {data['messages']} messages; "
          f"{sum(t['seconds'] for t in timings) / 60:.1f} min in all\n")
    def interval(value, low, high, digits=3) -> str:
        if value is None:
            return "—"
        return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else f"{value:.{digits}f}"

    def metric(key: str):
        return metrics.get(key)

    print("95 % intervals in brackets; n = held-out user messages (discriminator) / validation sessions (structure).")
    header = ["group", "disc acc [95% CI]", "balanced acc [95% CI]", "n", "structure-only [95% CI]", "n", "perplexity [95% CI]",
              "term F1", "user cut", "entropy", "TTR", "bigram"]
    print(" | ".join(header))
    for group in ["real", *simulators]:
        lexical = [metric(f"{group}.lexical.{m}_mean") for m in ("word_entropy", "type_token_ratio", "bigram_diversity")]
        if group == "real":
            cells = ["—"] * 8
        else:
            overall = discriminators[group]["metrics"]["overall"]
            base = discriminators[group].get("structure_baseline") or {}
            prefix = f"{group}.discriminator.overall.accuracy"
            cells = [
                interval(overall["accuracy"], metric(f"{prefix}_ci_low"), metric(f"{prefix}_ci_high")),
                interval(metric(f"{group}.discriminator.overall.balanced_accuracy"),
                         metric(f"{group}.discriminator.overall.balanced_accuracy_ci_low"),
                         metric(f"{group}.discriminator.overall.balanced_accuracy_ci_high")),
                str(overall["n"]),
                interval(base.get("accuracy"), base.get("ci_low"), base.get("ci_high")),
                str(base.get("n", "—")),
                interval(metric(f"{group}.perplexity.value"), metric(f"{group}.perplexity.value_ci_low"),
                         metric(f"{group}.perplexity.value_ci_high"), 2),
                interval(metric(f"{group}.termination.f1"), metric(f"{group}.termination.f1_ci_low"),
                         metric(f"{group}.termination.f1_ci_high")),
                interval(metric(f"{group}.truncation.user.share"), None, None),
            ]
        cells += [f"{v:.3f}" if isinstance(v, float) else "—" for v in lexical]
        print(" | ".join([group, *cells]))
    print("\nSession structure (sessions cut at the same user turns; 95 % intervals):")
    print(" | ".join(["group", "sessions", "messages/turn", "burst turns", "words/message", "markup msgs", "user turns", "user ended"]))
    for group in ["real", *simulators]:
        def cell(name: str, digits: int = 2) -> str:
            key = f"{group}.structure.{name}"
            return interval(metric(key), metric(f"{key}_ci_low"), metric(f"{key}_ci_high"), digits)

        print(" | ".join([group, str(metric(f"{group}.structure.n_sessions")), cell("messages_per_user_turn"),
                          cell("burst_turn_share"), cell("words_per_user_message", 1), cell("tagged_message_share"),
                          cell("user_turns_per_session"),
                          cell("user_ended_share")]))
    print()
    for iteration, report in pairs.items():
        skipped = " (DPO skipped: no pair)" if dpo[iteration].get("skipped") else ""
        print(f"{iteration}: {report['critical_points']['total']} critical points, {report['candidates']} candidates, "
              f"{report['kept_pairs']} pairs kept ({100 * report['kept_share']:.0f} %){skipped}")


if __name__ == "__main__":
    main()
