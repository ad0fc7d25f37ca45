"""Check: two experiments queued and run at once (`dvc queue start -j 2`) give the same results
as the same two experiments run one after the other (issue #13, "team use of the pipeline").

    python bench/queue_check.py                 # smoke config, two dpo.beta experiments (~15 min on 2 cores)
    python bench/queue_check.py --keep /tmp/q   # keep the two scratch repositories there

Makes two scratch copies of the repository with the smoke params (`configs/smoke.yaml`, as the
end-to-end test does). In copy A it queues `dpo.beta=0.5` and `dpo.beta=2.0` and starts two queue
workers, so the experiments run at the same time, each in DVC's own temporary workspace. In copy B
it runs the same two experiments with `dvc exp run`, one after the other. Then it compares, per
experiment, every stage's output hashes in the experiment's committed `dvc.lock` (models, data,
reports: byte-level, as DVC caches them) and prints the stages that differ (none, if sharing the
machine changed nothing). Both copies run with one thread per process (OMP_NUM_THREADS=1), so the
floating-point reduction order is the same in both and the comparison can be exact.

Run it alone on the machine: it is CPU-bound, and its times (printed) mean nothing beside other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from dial.workspace import copy_project  # noqa: E402

EXPERIMENTS = {"beta-0.5": "dpo.beta=0.5", "beta-2.0": "dpo.beta=2.0"}


def dvc(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def experiment_locks(root: Path, env: dict) -> dict[str, dict]:
    """name -> {stage: {out path: hash}} from each experiment's committed dvc.lock."""
    shown = json.loads(dvc(["exp", "show", "--json", "--no-pager"], root, env))
    revs = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") in EXPERIMENTS:
                    revs[rev["name"]] = rev["rev"]
    missing = set(EXPERIMENTS) - set(revs)
    if missing:
        raise SystemExit(f"{root}: experiments {sorted(missing)} did not finish (dvc exp show lists {sorted(revs)})")
    locks = {}
    for name, rev in revs.items():
        lock = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=root, capture_output=True, text=True,
                                             check=True).stdout)
        locks[name] = {
            stage: {out["path"]: out.get("md5") or out.get("hash") for out in entry.get("outs", [])}
            for stage, entry in lock["stages"].items()
        }
    return locks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the scratch copies under this folder")
    args = parser.parse_args()
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="dial-queue-check-"))
    queued_root, sequential_root = scratch / "queued", scratch / "sequential"
    for root in (queued_root, sequential_root):
        root.mkdir(parents=True, exist_ok=False)
        copy_project(REPO, root, smoke)
    # Each copy runs its own src/ (as scripts/validation_run.py does), one thread per process.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(queued_root / "src")}

    started = time.perf_counter()
    for name, assignment in EXPERIMENTS.items():
        dvc(["exp", "run", "--queue", "-S", assignment, "-n", name], queued_root, env)
    dvc(["queue", "start", "-j", "2"], queued_root, env)
    while True:
        time.sleep(10)
        status = dvc(["queue", "status"], queued_root, env)
        if not any(word in status for word in ("Queued", "Running")):
            break
    queued_s = time.perf_counter() - started
    dvc(["queue", "stop"], queued_root, env)
    print(f"queued, 2 at once: {queued_s / 60:.1f} min\n{status}", flush=True)
    if "Failed" in status:
        raise SystemExit(f"a queued experiment failed: `dvc queue logs <name>` in {queued_root}")

    env = {**env, "PYTHONPATH": str(sequential_root / "src")}
    started = time.perf_counter()
    for name, assignment in EXPERIMENTS.items():
        dvc(["exp", "run", "-S", assignment, "-n", name], sequential_root, env)
    sequential_s = time.perf_counter() - started
    print(f"one after the other: {sequential_s / 60:.1f} min", flush=True)

    queued, sequential = experiment_locks(queued_root, env), experiment_locks(sequential_root, env)
    differing = 0
    for name in EXPERIMENTS:
        stages = sorted(set(queued[name]) | set(sequential[name]))
        different = [stage for stage in stages if queued[name].get(stage) != sequential[name].get(stage)]
        differing += len(different)
        n_outs = sum(len(outs) for outs in sequential[name].values())
        print(f"{name}: {len(stages)} stages, {n_outs} outputs; differing: {', '.join(different) or 'none'}")
    betas = {name: json.dumps(sequential[name].get("dpo@it1"), sort_keys=True) for name in EXPERIMENTS}
    print("the two experiments differ from each other at dpo@it1:", len(set(betas.values())) == 2)
    print("RESULT:", "same outputs" if differing == 0 else f"{differing} stage outputs differ")
    if not args.keep:
        print(f"scratch copies left in {scratch} (delete when done)")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
