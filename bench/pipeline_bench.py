"""Benchmark: ingest → SFT samples on the default params, and a no-op `dvc repro`.

Runs the real pipeline in a scratch copy of the repository (the base model is materialised first
and not counted). Targets (issue #2): ingest → SFT samples ≤ 120 s; `dvc repro` with nothing
changed ≤ 5 s.

    python bench/pipeline_bench.py [--max-sessions N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dial.workspace import copy_project, run

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ["ingest", "scrub_pii", "split", "build_contexts", "sft_samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-sessions", type=int, default=None, help="override data.max_sessions")
    args = parser.parse_args()
    override = {"data": {"max_sessions": args.max_sessions}} if args.max_sessions is not None else None
    with tempfile.TemporaryDirectory(prefix="dial-bench-") as scratch:
        root = copy_project(REPO, Path(scratch), override)
        started = time.perf_counter()
        run(["dvc", "repro", "base_model"], root)
        base_seconds = time.perf_counter() - started

        started = time.perf_counter()
        run(["dvc", "repro", *DATA_STAGES], root)
        data_seconds = time.perf_counter() - started

        started = time.perf_counter()
        noop = run(["dvc", "repro"], root)
        noop_seconds = time.perf_counter() - started
        assert "Running stage" not in noop.stdout, noop.stdout

        import json

        data = json.loads((root / "reports/data.json").read_text())
        samples = json.loads((root / "reports/sft_samples.json").read_text())
    print(f"base_model (not counted): {base_seconds:7.1f} s")
    print(f"ingest → sft_samples:     {data_seconds:7.1f} s  for {data.get('sessions_sampled')} sessions, "
          f"{data.get('messages')} messages, {samples.get('samples')} samples   target ≤ 120 s: "
          f"{'OK' if data_seconds <= 120 else 'MISSED'}  (ratio to target {data_seconds / 120:.2f})")
    print(f"dvc repro, nothing changed: {noop_seconds:5.1f} s   target ≤ 5 s: "
          f"{'OK' if noop_seconds <= 5 else 'MISSED'}  (ratio to target {noop_seconds / 5:.2f})")


if __name__ == "__main__":
    main()
