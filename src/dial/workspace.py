"""A scratch copy of this project as a fresh git repo, for end-to-end tests and benchmarks that
run the real `dvc repro` without touching the working tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def deep_update(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = deep_update(dict(base.get(key) or {}), value) if isinstance(value, dict) else value
    return base


def tool_env(root: Path | None = None) -> dict[str, str]:
    """The environment with this interpreter's bin/ first, so `python`, `dvc`, `dial` resolve here;
    given a project copy `root`, its own `src/` first on the import path, so a long run in a scratch
    copy keeps running the code it was copied with while the working tree changes."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    if root is not None and (Path(root) / "src" / "dial").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(root).resolve() / "src"), os.environ.get("PYTHONPATH")]))
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(args)}` failed ({result.returncode}) in {cwd}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def copy_project(repo: Path, dest: Path, params_override: dict | None = None) -> Path:
    """Copy the files git knows (tracked or not ignored) into `dest`, apply a params override and
    commit, so `dest` behaves like a fresh clone."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = repo / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if params_override:
        params_path = dest / "params.yaml"
        params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
        params_path.write_text(yaml.safe_dump(deep_update(params, params_override), sort_keys=False), encoding="utf-8")
        # dvc.yaml's per-iteration stages follow dial.iterations (see dial.pipeline).
        run([sys.executable, "-m", "dial.cli", "pipeline"], dest)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=dial", "-c", "user.email=dial@localhost", "commit", "-qm", "scratch copy"], dest)
    return dest


def stage_order(root: Path) -> list[str]:
    """Every stage of `root`'s pipeline in a dependency order (`dvc dag` edges, ties broken by
    the order of `dvc stage list`)."""
    import re
    from graphlib import TopologicalSorter

    listed = [line.split()[0] for line in run(["dvc", "stage", "list"], root).stdout.splitlines() if line.strip()]
    rank = {name: i for i, name in enumerate(listed)}
    graph: dict[str, set[str]] = {name: set() for name in listed}
    for source, target in re.findall(r'"([^"]+)" -> "([^"]+)"', run(["dvc", "dag", "--dot"], root).stdout):
        graph.setdefault(target, set()).add(source)
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    order = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda name: rank.get(name, len(rank)))
        order.extend(ready)
        sorter.done(*ready)
    return order


def repro_timed(root: Path, stages: list[str] | None = None) -> list[dict]:
    """Run each stage alone (`dvc repro -s`), in order, measuring its wall time and the peak RSS
    of its process tree (os.wait4's rusage: the stage's process and what it waited for)."""
    import time

    results = []
    for stage in stages if stages is not None else stage_order(root):
        started = time.perf_counter()
        process = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=root, env=tool_env(root),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"`dvc repro -s {stage}` failed in {root}:\n{output[-4000:]}")
        results.append({"stage": stage, "seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20, "output": output})
    return results
