"""Two processes sharing `.dial/` (two experiments, or a stage run by hand beside `dvc repro`) do
not collide: checkpoints of a run in progress elsewhere survive, resume files are never torn."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from dial.simulation.simulate import ResumeFile
from dial.training.common import checkpoint_run_dir, release_run_dir


def holder(checkpoint_dir, key):
    """Another process that takes run `key` and holds it until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from dial.training.common import checkpoint_run_dir
        checkpoint_run_dir({str(checkpoint_dir)!r}, {key!r})
        print("holding", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_checkpoints_of_a_run_in_progress_elsewhere_survive(tmp_path):
    other = holder(tmp_path, "run-a")
    try:
        (tmp_path / "run-a" / "checkpoint-2").mkdir()
        mine = checkpoint_run_dir(tmp_path, "run-b")
        assert (tmp_path / "run-a" / "checkpoint-2").is_dir()  # in use by the other process: kept
        assert mine == tmp_path / "run-b"
    finally:
        other.stdin.close()
        other.wait(30)
    # Once that process is gone its checkpoints are stale (another run's): the next run removes them,
    # and its own earlier folder too.
    checkpoint_run_dir(tmp_path, "run-c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-c"]
    release_run_dir(tmp_path / "run-c")


def test_two_processes_saving_one_resume_file_never_tear_it(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from dial.simulation.simulate import ResumeFile, SessionState
        fingerprint = sys.argv[1]
        states = [SessionState(session_id=f"s{{i}}", real_session_id="r", real_user_id="u", chatbot_id="bot",
                               simulation_index=0, seed=i, context_text="ctx " * 200, current_summary="", topic=None,
                               stop_reason="max_turns") for i in range(20)]
        resume = ResumeFile(__import__("pathlib").Path({str(tmp_path / "resume.json")!r}), fingerprint)
        for _ in range(150):
            resume.save(states)
    """)
    processes = [subprocess.Popen([sys.executable, "-c", code, fingerprint], stderr=subprocess.PIPE, text=True)
                 for fingerprint in ("experiment-a", "experiment-b")]
    for process in processes:
        assert process.wait(120) == 0, process.stderr.read()
    payload = json.loads((tmp_path / "resume.json").read_text())  # whole, from one of them
    assert payload["fingerprint"] in {"experiment-a", "experiment-b"} and len(payload["finished"]) == 20
    assert len(ResumeFile(tmp_path / "resume.json", payload["fingerprint"]).load()) == 20
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
