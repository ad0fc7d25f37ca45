"""Stage plumbing: a stage re-launches itself under `accelerate launch` when params ask (a real
2-process launch on this CPU)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import typer

from dial.params import TrainingLaunchParams
from dial.stage import launched_distributed, relaunch_under_accelerate


def test_a_stage_relaunches_itself_with_the_processes_asked_for(tmp_path, monkeypatch):
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from dial.params import TrainingLaunchParams
        from dial.stage import relaunch_under_accelerate
        launch = TrainingLaunchParams(launcher="accelerate", num_processes=2)
        if not relaunch_under_accelerate(launch, __file__, sys.argv[1:]):
            rank, world = os.environ["RANK"], os.environ["WORLD_SIZE"]
            open(os.path.join({str(tmp_path)!r}, f"ran-{{rank}}-of-{{world}}-{{sys.argv[1]}}"), "w").close()
    """))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_distributed()
    import subprocess

    subprocess.run([sys.executable, str(script), "it1"], check=True, timeout=300)
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0-of-2-it1", "ran-1-of-2-it1"]


def test_no_launcher_or_already_launched_runs_in_place(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert relaunch_under_accelerate(TrainingLaunchParams(), "unused.py", []) is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert relaunch_under_accelerate(TrainingLaunchParams(launcher="accelerate", num_processes=2), "unused.py", []) is False


def test_a_failed_launch_exits_with_its_status(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    script = tmp_path / "fails.py"
    script.write_text("raise SystemExit(3)\n")
    with pytest.raises(typer.Exit) as exited:
        relaunch_under_accelerate(TrainingLaunchParams(launcher="accelerate", num_processes=2), str(script), [])
    assert exited.value.exit_code != 0


def _run_stage_script(tmp_path, body: str):
    import subprocess

    script = tmp_path / "my_stage.py"
    script.write_text(textwrap.dedent(f"""
        import typer
        from dial.errors import DialError
        from dial.stage import run_stage

        def main(name: str = typer.Argument(...)) -> None:
            {body}

        run_stage(main)
    """))
    return subprocess.run([sys.executable, str(script), "it1"], capture_output=True, text=True, timeout=120)


def test_a_finished_stage_logs_its_wall_time(tmp_path):
    finished = _run_stage_script(tmp_path, "print('working on', name)")
    assert finished.returncode == 0, finished.stderr
    assert "working on it1" in finished.stdout
    assert "my_stage.py it1 done in" in finished.stderr and "since the process started" in finished.stderr


def test_a_failed_stage_reports_the_error_and_no_wall_time(tmp_path):
    failed = _run_stage_script(tmp_path, "raise DialError('the input is bad')")
    assert failed.returncode == 1
    assert "error: the input is bad" in failed.stderr
    assert "done in" not in failed.stderr
