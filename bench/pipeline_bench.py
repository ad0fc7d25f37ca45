"""Benchmark: the whole pipeline, stage by stage, in a scratch copy of the repository.

    python bench/pipeline_bench.py                 # default params.yaml: all stages (1 DIAL iteration, <= 20 min)
    python bench/pipeline_bench.py --smoke         # the end-to-end test's smoke-sized override
    python bench/pipeline_bench.py --data-only     # base model, then ingest → SFT samples, then a no-op repro

Each stage runs alone (`dvc repro -s STAGE`, in DVC's order) so its wall time and the peak RSS of
its process tree (os.wait4) are measured; then a `dvc repro` with nothing changed. Targets: the
whole default `dvc repro` ≤ 20 min (issue #4), the smoke run ≤ 5 min, ingest → SFT samples ≤ 120 s
(issue #2), a no-op `dvc repro` ≤ 5 s, peak RSS of any stage ≤ 6 GiB (issue #3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dial.workspace import copy_project, repro_timed, run, stage_order

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ["ingest", "scrub_pii", "split", "build_contexts", "sft_samples"]
GIB6 = 6.0


def verdict(value: float, target: float) -> str:
    return f"target ≤ {target:g}: {'OK' if value <= target else 'MISSED'} (ratio {value / target:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="use tests/test_pipeline_e2e.py's SMOKE override")
    parser.add_argument("--data-only", action="store_true", help="only base_model and ingest → sft_samples")
    args = parser.parse_args()
    override = None
    if args.smoke:
        sys.path.insert(0, str(REPO / "tests"))
        from test_pipeline_e2e import SMOKE

        override = SMOKE
    with tempfile.TemporaryDirectory(prefix="dial-bench-") as scratch:
        root = copy_project(REPO, Path(scratch), override)
        stages = ["base_model", *DATA_STAGES] if args.data_only else stage_order(root)
        results = repro_timed(root, stages)
        started = time.perf_counter()
        noop = run(["dvc", "repro"] + (stages if args.data_only else []), root)
        noop_seconds = time.perf_counter() - started
        assert "Running stage" not in noop.stdout, noop.stdout

    width = max(len(r["stage"]) for r in results)
    print(f"{'stage':<{width}}  {'seconds':>8}  {'peak RSS GiB':>12}")
    for r in results:
        print(f"{r['stage']:<{width}}  {r['seconds']:8.1f}  {r['peak_rss_gib']:12.2f}")
    total = sum(r["seconds"] for r in results)
    data = sum(r["seconds"] for r in results if r["stage"] in DATA_STAGES)
    peak = max(r["peak_rss_gib"] for r in results)
    print()
    print(f"ingest → sft_samples: {data:7.1f} s   {verdict(data, 120)}")
    if not args.data_only:
        target = 300 if args.smoke else 1200
        print(f"whole dvc repro:      {total:7.1f} s   {verdict(total, target)} ({total / 60:.1f} min)")
    print(f"no-op dvc repro:      {noop_seconds:7.1f} s   {verdict(noop_seconds, 5)}")
    print(f"peak RSS of a stage:  {peak:7.2f} GiB {verdict(peak, GIB6)}")


if __name__ == "__main__":
    main()
