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
    """Run a stage's typer `main`: user errors print one clear message and exit 1 (no traceback)."""
    configure_logging()
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(guarded(main))
    app()


def guarded(function: Callable[..., None]) -> Callable[..., None]:
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return wrapper
