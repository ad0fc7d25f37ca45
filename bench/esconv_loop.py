"""Real-data check (issue #4): the whole DIAL loop on ESConv, the mental-health support corpus.

    python bench/esconv_loop.py                      # ~25 minutes on a 2-core CPU
    python bench/esconv_loop.py --max-sessions 400 --iterations 2

Runs `dvc repro` (every stage, stage by stage) in a scratch copy of the repository with
`data.source: esconv` read from ../shared/datasets/esconv (CC BY-NC: read in place, never copied)
and the shipped CPU-sized params otherwise, plus the overrides below; then prints, per simulator
(zero-shot, sft, it1..itK): discriminator accuracy (overall and at user turn 1), pairs kept per
iteration, and lexical diversity of the user messages next to the real users'.

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
        "dial": {"iterations": args.iterations},
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
    print(f"{'group':<10} {'disc acc':>8} {'acc t1':>7} {'MCC':>6} {'n msgs':>6}  {'entropy':>7} {'TTR':>6} {'bigram':>6}")
    for group in ["real", *simulators]:
        lexical = [metrics.get(f"{group}.lexical.{m}_mean") for m in ("word_entropy", "type_token_ratio", "bigram_diversity")]
        if group == "real":
            disc = ["—", "—", "—", "—"]
        else:
            m = discriminators[group]["metrics"]
            disc = [m["overall"]["accuracy"], m["turn_1"]["accuracy"], m["overall"]["mcc"], m["overall"]["n"]]
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in disc + lexical]
        print(f"{group:<10} {cells[0]:>8} {cells[1]:>7} {cells[2]:>6} {cells[3]:>6}  {cells[4]:>7} {cells[5]:>6} {cells[6]:>6}")
    print()
    for iteration, report in pairs.items():
        skipped = " (DPO skipped: no pair)" if dpo[iteration].get("skipped") else ""
        print(f"{iteration}: {report['critical_points']['total']} critical points, {report['candidates']} candidates, "
              f"{report['kept_pairs']} pairs kept ({100 * report['kept_share']:.0f} %){skipped}")


if __name__ == "__main__":
    main()
