"""Helpers for the ingest tests: fixture files, JSONL writers and a one-call ingest runner.

(A plain module, not conftest.py, so test modules can import it by a unique name.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dial import io, paths
from dial.data.ingest import IngestResult, run_ingest
from dial.params import DataParams

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ingest"
# ESConv is CC BY-NC: never copied into the repo; CI has `shared/` beside the clone.
SHARED_ESCONV = REPO.parent / "shared" / "datasets" / "esconv"


@dataclass
class Ingested:
    """What one `run_ingest` call wrote, read back through the artifact readers."""

    result: IngestResult
    out_dir: Path
    quarantine_path: Path
    report_path: Path
    sessions: pd.DataFrame
    messages: pd.DataFrame
    users: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict

    def files(self) -> list[Path]:
        return [
            paths.sessions_file(self.out_dir),
            paths.messages_file(self.out_dir),
            paths.users_file(self.out_dir),
            self.quarantine_path,
            self.report_path,
        ]


def ingest_into(root: Path, **data) -> Ingested:
    params = DataParams(**{"max_sessions": 0, **data})
    out_dir, quarantine_dir, report_path = root / "ingested", root / "quarantine", root / "reports" / "data.json"
    result = run_ingest(params, out_dir, quarantine_dir, report_path, progress=False)
    return Ingested(
        result=result,
        out_dir=out_dir,
        quarantine_path=quarantine_dir / "ingest.parquet",
        report_path=report_path,
        sessions=io.SESSIONS.read(paths.sessions_file(out_dir)),
        messages=io.MESSAGES.read(paths.messages_file(out_dir)),
        users=io.USERS.read(paths.users_file(out_dir)),
        quarantine=io.QUARANTINE.read(quarantine_dir / "ingest.parquet"),
        report=json.loads(report_path.read_text(encoding="utf-8")),
    )


def session_line(session_id: str = "s-1", user_id: str = "u-1", **overrides) -> dict:
    """A valid canonical session (a user/assistant exchange), fields overridable."""
    record = {
        "session_id": session_id,
        "user_id": user_id,
        "started_at": "2024-01-01T10:00:00Z",
        "messages": [
            {"role": "user", "text": f"hello from {user_id}"},
            {"role": "assistant", "text": "hi, how can I help?"},
        ],
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, lines: list[dict | str | bytes]) -> Path:
    """Dicts are JSON-encoded, str/bytes written verbatim (one per line)."""
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line, ensure_ascii=False)
        chunks.append(line.encode("utf-8") if isinstance(line, str) else line)
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path
