"""Shared plumbing for the thin stage entry points in `stages/` and the `dial` CLI."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import typer

from dial.errors import DialError
from dial.io import ArtifactError
from dial.params import ParamsError

USER_ERRORS = (DialError, ArtifactError, ParamsError, FileNotFoundError)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def run_stage(main: Callable[..., None]) -> None:
    """Run a stage's typer `main`: user errors print one clear message and exit 1 (no traceback).
    A finished stage logs its wall time, imports included (where a `dvc repro` spends its time)."""
    import time

    configure_logging()
    started = time.perf_counter()
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(guarded(main))
    try:
        app()  # click ends with sys.exit, 0 on success
    except SystemExit as exit_:
        if exit_.code in (0, None):
            seconds = time.perf_counter() - started
            logging.getLogger("dial.stage").info(
                "%s done in %.1f s (%.1f s since the process started)", " ".join([_script_name(), *sys.argv[1:]]),
                seconds, seconds + _seconds_before(started),
            )
        raise


def _script_name() -> str:
    import os

    return os.path.basename(sys.argv[0]) if sys.argv else "stage"


def _seconds_before(started: float) -> float:
    """Seconds between this process's start and `started` (imports: several seconds per stage)."""
    import time

    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time() - (time.perf_counter() - started))
    except Exception:  # psutil missing or no process table: the stage's own time is still logged
        return 0.0


def launched_distributed() -> bool:
    """True inside a process that `accelerate launch` / torchrun started."""
    import os

    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """False in the non-main processes of an `accelerate launch` / torchrun run (they write nothing)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def relaunch_under_accelerate(launch, script: str, argv: list[str]) -> bool:
    """If `launch` (params `training`) asks for accelerate and this process was not started by it,
    run `script argv` under `accelerate launch` and return True (the caller stops: the launched
    processes did the work); else False. A failed launch exits with its status."""
    import os
    import subprocess

    if launch.launcher != "accelerate" or launched_distributed():
        return False
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.config_file:
        command += ["--config_file", launch.config_file]
    else:
        # On a machine without CUDA, accelerate's multi-GPU launcher starts the processes and they
        # train on the CPU over gloo; `--cpu` would start only one.
        command += ["--multi_gpu", "--num_processes", str(launch.num_processes), "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += [script, *argv]
    logging.getLogger("dial.stage").info("launching: %s", " ".join(command))
    status = subprocess.run(command, env=dict(os.environ)).returncode
    if status != 0:
        raise typer.Exit(code=status)
    return True


def guarded(function: Callable[..., None]) -> Callable[..., None]:
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return wrapper
