"""The ESConv validation run (issue #12): the whole DIAL loop on real mental-health support data at
a size that can see an effect, written up in docs/validation.md.

    python scripts/validation_run.py                          # configs/validation.yaml, <= 2 h on 2 cores
    python scripts/validation_run.py --override my.yaml       # more overrides on top (later files win)

Copies the repository (the files git knows) into `--workdir`, merges `configs/validation.yaml`
(and any `--override`) into its params.yaml, and runs `dvc repro` stage by stage, timing each. The
copy runs its own `src/` (PYTHONPATH), so the working tree can change meanwhile. Re-running with
the same workdir and overrides resumes: DVC skips the stages that are done (their earlier timings
are kept). ESConv is read in place from `--esconv` (CC BY-NC: never copied, never quoted in docs).

Writes, into the working tree: `docs/validation.md` (command, machine, precision, wall time per
stage, sizes, the SFT held-out curve, kept pairs and DPO margins, and the run's own report) and
`docs/validation/` (the run's `report.md`, `metrics.json` and figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dial.evaluation.report import _new_figure, _png
from dial.training.common import resolve_precision
from dial.workspace import copy_project, deep_update, repro_timed, stage_order

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "validation.yaml"


def load_overrides(paths: list[Path], esconv: Path) -> dict:
    override: dict = {}
    for path in paths:
        override = deep_update(override, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    override = deep_update(override, {"data": {"path": str(esconv.resolve())}})
    return override


def prepare(workdir: Path, override: dict) -> Path:
    """A scratch copy with `override` applied, or the existing one if it was made with the same."""
    stamp = workdir / ".validation-override.json"
    wanted = json.dumps(override, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        print(f"resuming in {workdir}", flush=True)
        return workdir
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    copy_project(REPO, workdir, override)
    stamp.write_text(wanted)
    return workdir


def run_stages(root: Path) -> list[dict]:
    """Each stage alone, in order; a stage DVC finds up to date keeps the timing of the run that made it."""
    timings_path = root / ".validation-timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    stages = stage_order(root)
    for number, stage in enumerate(stages, 1):
        print(f"[{datetime.datetime.now():%H:%M:%S}] {number}/{len(stages)} {stage}", flush=True)
        (result,) = repro_timed(root, [stage])
        result.pop("output")
        if stage not in timings or result["seconds"] > 10:
            timings[stage] = result
            timings_path.write_text(json.dumps(timings, indent=1))
        print(f"    {result['seconds'] / 60:.1f} min, peak RSS {result['peak_rss_gib']:.1f} GiB", flush=True)
    return [timings[stage] for stage in stages]


def sft_curve_figure(heldout: dict) -> bytes:
    figure = _new_figure(6.4, 3.6)
    axes = figure.add_subplot()
    steps = [point["step"] for point in heldout["curve"]]
    axes.plot(steps, [point["perplexity"] for point in heldout["curve"]], marker="o", color="#1f77b4")
    axes.axvline(heldout["kept_step"], color="#2ca02c", linestyle="--", linewidth=0.8, label=f"adapter kept (step {heldout['kept_step']})")
    axes.set_xlabel("SFT step (one session window each)")
    axes.set_ylabel("held-out perplexity")
    axes.set_title(f"SFT: perplexity of real seeker turns in {heldout['windows']} held-out windows")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import os

    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; precision auto → {resolve_precision('auto')}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def write_doc(root: Path, timings: list[dict], command: str, doc: Path, started: str) -> None:
    reports = root / "reports"
    params = yaml.safe_load((root / "params.yaml").read_text())
    iterations = [f"it{k}" for k in range(1, params["dial"]["iterations"] + 1)]
    figures_dir = doc.parent / doc.stem
    if figures_dir.exists():
        shutil.rmtree(figures_dir)
    shutil.copytree(reports / "figures", figures_dir / "figures")
    shutil.copy2(reports / "report.md", figures_dir / "report.md")
    shutil.copy2(reports / "metrics.json", figures_dir / "metrics.json")
    sft = json.loads((reports / "sft.json").read_text())
    data = json.loads((reports / "data.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    total = sum(t["seconds"] for t in timings)

    lines = [
        "# Validation run on ESConv",
        "",
        "<!-- written by scripts/validation_run.py; the 'What it shows' section is by hand -->",
        "",
        f"- **Command:** `{command}`",
        f"- **Code:** {commit}{' (with uncommitted changes)' if dirty else ''}; params: `params.yaml` + `configs/validation.yaml`"
        " (the merged file is `docs/validation/params.yaml`)",
        f"- **Machine:** {machine()}",
        f"- **Started:** {started}; **wall time:** {total / 60:.1f} min (stages run one at a time, nothing else on the machine)",
        f"- **Data:** ESConv, {data['sessions_sampled']} sessions, {data['messages']} messages, read in place (CC BY-NC)",
        "",
        "The run's own report (every metric with its 95 % interval and n) is [validation/report.md](validation/report.md);",
        "its figures are in [validation/figures/](validation/figures/).",
        "",
        "## SFT: trained until held-out perplexity stops improving",
        "",
    ]
    shutil.copy2(root / "params.yaml", figures_dir / "params.yaml")
    heldout = sft.get("heldout")
    if heldout:
        (figures_dir / "sft_heldout.png").write_bytes(sft_curve_figure(heldout))
        first, best = heldout["curve"][0], min(heldout["curve"][1:] or heldout["curve"], key=lambda p: p["loss"])
        lines += [
            "![SFT held-out perplexity](validation/sft_heldout.png)",
            "",
            f"{sft['train_windows_used']} of {sft['train_windows_available']} train-session windows (≤ {sft['max_sample_tokens']} tokens, "
            f"{sft['train_samples_used']} user turns and endings), {sft['steps']} steps. Held-out perplexity of the real seeker "
            f"turns in {heldout['windows']} valid-split windows: {first['perplexity']:.2f} before training, best "
            f"{best['perplexity']:.2f} at step {best['step']}; "
            + ("training stopped early (no new best for the patience) and the best adapter was kept." if heldout["stopped_early"]
               else "**it was still improving when the step budget ran out** (no plateau within this run's budget)."),
            "",
        ]
    lines += ["## Kept pairs and DPO", ""]
    rows = []
    for iteration in iterations:
        pairs = json.loads((reports / "pairs" / f"{iteration}.json").read_text())
        dpo = json.loads((reports / "dpo" / f"{iteration}.json").read_text())
        rows.append([
            iteration, pairs["critical_points"]["total"], pairs["candidates"], pairs["kept_pairs"],
            f"{100 * pairs['kept_share']:.0f} %", dpo.get("pairs_used", 0), dpo.get("steps", 0),
            dpo.get("first_train_loss", "—"), dpo.get("mean_train_loss", "—"), dpo.get("mean_rewards_margins", "—"),
            dpo.get("mean_rewards_accuracies", "—"),
        ])
    lines += table(["iteration", "critical points", "alternatives", "kept pairs", "kept share", "DPO pairs", "DPO steps",
                    "first loss", "mean loss", "mean reward margin", "mean reward accuracy"], rows)
    lines += ["", "## Wall time per stage", ""]
    lines += table(["stage", "minutes", "peak RSS (GiB)"], [[t["stage"], f"{t['seconds'] / 60:.1f}", f"{t['peak_rss_gib']:.1f}"] for t in timings])
    lines += ["", "## What it shows", "", "(to be written after reading the run: see the session note)", ""]
    doc.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {doc} and {figures_dir}/", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esconv", type=Path, default=REPO.parent / "shared" / "datasets" / "esconv")
    parser.add_argument("--override", type=Path, action="append", default=[], help="more params overrides (YAML), after the config")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dial-validation"))
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "validation.md")
    args = parser.parse_args()
    if not (args.esconv / "train.jsonl").is_file() and not (args.esconv / "ESConv.json").is_file():
        raise SystemExit(f"ESConv not found at {args.esconv} (expected train.jsonl or ESConv.json)")
    started = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    override = load_overrides([CONFIG, *args.override], args.esconv)
    root = prepare(args.workdir, override)
    timings = run_stages(root)
    command = " ".join(["python scripts/validation_run.py", *(f"--override {p}" for p in args.override)])
    write_doc(root, timings, command, args.doc, started)


if __name__ == "__main__":
    sys.exit(main())
