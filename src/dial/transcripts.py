"""Find any session (real or simulated) under data/ and render it as a readable transcript."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from dial import paths
from dial.errors import InputError


@dataclass
class Transcript:
    session: dict
    messages: pd.DataFrame
    simulation: dict | None
    where: Path


def session_dirs(root: Path = Path(".")) -> list[Path]:
    """Folders holding sessions.parquet + messages.parquet: scrubbed real data, then simulations."""
    candidates = [root / paths.SCRUBBED_DIR, root / paths.INGESTED_DIR]
    simulated = root / paths.SIMULATED_DIR
    if simulated.exists():
        candidates += sorted(p for p in simulated.iterdir() if p.is_dir())
    return [d for d in candidates if paths.sessions_file(d).exists() and paths.messages_file(d).exists()]


def find_session(session_id: str, root: Path = Path(".")) -> Transcript:
    con = duckdb.connect()
    for directory in session_dirs(root):
        found = con.execute(
            "SELECT * FROM read_parquet(?) WHERE session_id = ?", [str(paths.sessions_file(directory)), session_id]
        ).df()
        if found.empty:
            continue
        messages = con.execute(
            "SELECT * FROM read_parquet(?) WHERE session_id = ? ORDER BY turn_index",
            [str(paths.messages_file(directory)), session_id],
        ).df()
        simulation = None
        simulations_file = directory / "simulations.parquet"
        if simulations_file.exists():
            rows = con.execute("SELECT * FROM read_parquet(?) WHERE session_id = ?", [str(simulations_file), session_id]).df()
            simulation = rows.iloc[0].to_dict() if len(rows) else None
        return Transcript(found.iloc[0].to_dict(), messages, simulation, directory)
    searched = ", ".join(str(d) for d in session_dirs(root)) or "nothing (run `dvc repro` first)"
    raise InputError(f"session {session_id!r} not found; searched {searched}")


def render(transcript: Transcript, width: int = 100) -> str:
    session = transcript.session
    lines = [f"session  {session['session_id']}", f"from     {transcript.where}"]
    lines.append(f"user     {session['user_id']}   source {session['source']}   chatbot {session.get('chatbot_id') or '-'}")
    if session.get("topic"):
        lines.append(f"topic    {session['topic']}")
    if transcript.simulation:
        sim = transcript.simulation
        lines.append(
            f"simulator {sim['simulator_id']}   seed {sim['seed']}   stop {sim['stop_reason']}   "
            f"grounded on {sim['real_session_id']}   guardrail retries {sim['guardrail_retries']}"
        )
    lines.append("-" * min(width, 100))
    for message in transcript.messages.itertuples(index=False):
        speaker = "USER   " if message.role == "user" else "CHATBOT"
        flags = json.loads(message.metadata).get("flagged") if message.metadata else None
        body = textwrap.fill(message.text, width=width - 12, subsequent_indent=" " * 12) if width > 20 else message.text
        lines.append(f"{message.turn_index:>3} {speaker} {body}" + (f"   [guardrail: {', '.join(flags)}]" if flags else ""))
    if transcript.simulation:
        lines.append(f"--- ended: {transcript.simulation['stop_reason']}")
    return "\n".join(lines)
