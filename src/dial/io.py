"""Atomic, deterministic, schema-checked reading and writing of every artifact.

Each artifact kind is one `Artifact` (a schema plus its writer/reader pair). The writer validates,
orders columns and rows deterministically, writes to a temporary file beside the target and renames
it into place, so an interrupted stage never leaves a half-written artifact and the same inputs give
byte-identical files (DVC's cache relies on it). The schema name is stored in the Parquet metadata
so `dial check PATH` knows how to validate any artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.parquet as pq

from dial import schemas

SCHEMA_KEY = b"dial.schema"
_UMASK = os.umask(0)
os.umask(_UMASK)


class ArtifactError(ValueError):
    """An artifact failed its schema; the message names the file, rows and columns."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; artifacts get normal permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `out_dir`; if the block succeeds it replaces `out_dir` in one
    rename, so readers never see a half-written model. On failure nothing changes."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old: Path | None = None
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp creates 0700
        for path in staging.iterdir():
            os.chmod(path, 0o644)  # some libraries write through mkstemp (0600)
        if out_dir.exists() or out_dir.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, payload: object) -> None:
    """JSON reports: sorted keys and a trailing newline so they diff cleanly across commits."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _describe_failures(path: Path, exc: pandera.errors.SchemaErrors, limit: int = 10) -> str:
    cases = exc.failure_cases
    lines = [f"{path}: {len(cases)} schema violation(s) for {exc.schema.name}:"]
    for case in cases.head(limit).itertuples(index=False):
        row = "" if pd.isna(case.index) else f"row {case.index}, "
        column = case.column if isinstance(case.column, str) else "(table)"
        lines.append(f"  {row}column {column!r}: failed {case.check} (value: {case.failure_case!r})")
    if len(cases) > limit:
        lines.append(f"  ... and {len(cases) - limit} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class Artifact:
    """A kind of Parquet artifact: its schema and the sort order that makes it deterministic."""

    name: str
    schema: type[schemas._Strict]
    sort_by: tuple[str, ...]

    def validate(self, frame: pd.DataFrame, path: str | Path = "<memory>") -> pd.DataFrame:
        try:
            return self.schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            raise ArtifactError(_describe_failures(Path(path), exc)) from None

    def write(self, frame: pd.DataFrame, path: str | Path) -> Path:
        path = Path(path)
        columns = list(self.schema.to_schema().columns)
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise ArtifactError(f"{path}: cannot write {self.name}: missing column(s) {missing}")
        ordered = frame[columns].sort_values(list(self.sort_by), kind="stable").reset_index(drop=True)
        validated = self.validate(ordered, path)
        table = pa.Table.from_pandas(validated, preserve_index=False)
        metadata = dict(table.schema.metadata or {})
        metadata.pop(b"pandas", None)  # pandas metadata embeds versions; keep files stable
        metadata[SCHEMA_KEY] = self.name.encode()
        table = table.replace_schema_metadata(metadata)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return path

    def read(self, path: str | Path) -> pd.DataFrame:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: {self.name} artifact not found (run the stage that writes it)")
        frame = pq.read_table(path).to_pandas()
        return self.validate(frame, path)


SESSIONS = Artifact("sessions", schemas.SessionsSchema, ("user_id", "session_index"))
MESSAGES = Artifact("messages", schemas.MessagesSchema, ("session_id", "turn_index"))
USERS = Artifact("users", schemas.UsersSchema, ("user_id",))
QUARANTINE = Artifact("quarantine", schemas.QuarantineSchema, ("source_file", "line", "field"))
PII_FINDINGS = Artifact("pii_findings", schemas.PiiFindingsSchema, ("session_id", "location", "start"))
CONTEXTS = Artifact("contexts", schemas.ContextsSchema, ("session_id",))
SPLITS = Artifact("splits", schemas.SplitsSchema, ("user_id",))
SFT_SAMPLES = Artifact("sft_samples", schemas.SftSamplesSchema, ("sample_id",))
SIMULATIONS = Artifact("simulations", schemas.SimulationsSchema, ("session_id",))

ARTIFACTS: dict[str, Artifact] = {
    artifact.name: artifact
    for artifact in (SESSIONS, MESSAGES, USERS, QUARANTINE, PII_FINDINGS, CONTEXTS, SPLITS, SFT_SAMPLES, SIMULATIONS)
}

TERMINATION_PREDICTIONS = Artifact(
    "termination_predictions", schemas.TerminationPredictionsSchema, ("simulator_id", "session_id", "turn_index")
)
ARTIFACTS[TERMINATION_PREDICTIONS.name] = TERMINATION_PREDICTIONS

PAIR_CANDIDATES = Artifact("pair_candidates", schemas.PairCandidatesSchema, ("session_id", "turn_index", "candidate_index"))
PREFERENCE_PAIRS = Artifact("preference_pairs", schemas.PreferencePairsSchema, ("session_id", "turn_index"))
ARTIFACTS[PAIR_CANDIDATES.name] = PAIR_CANDIDATES
ARTIFACTS[PREFERENCE_PAIRS.name] = PREFERENCE_PAIRS

ISSUES = Artifact("issues", schemas.IssuesSchema, ("item_id", "turn_index", "group", "category", "evidence", "judge"))
USER_ACTIONS = Artifact("user_actions", schemas.UserActionsSchema, ("item_id", "turn_index", "group", "action", "judge"))
ARTIFACTS[ISSUES.name] = ISSUES
ARTIFACTS[USER_ACTIONS.name] = USER_ACTIONS
GOAL_STATES = Artifact("goal_states", schemas.GoalStatesSchema, ("group", "session_id", "component_index", "user_turn"))
ARTIFACTS[GOAL_STATES.name] = GOAL_STATES


def artifact_of(path: str | Path) -> Artifact:
    """The artifact kind of a Parquet file, from the schema name its writer stored."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        metadata = pq.read_schema(path).metadata or {}
    except pa.ArrowInvalid as exc:
        raise ArtifactError(f"{path}: not a Parquet file ({exc})") from None
    name = metadata.get(SCHEMA_KEY, b"").decode()
    if name not in ARTIFACTS:
        raise ArtifactError(f"{path}: not a dial artifact (no known '{SCHEMA_KEY.decode()}' in its metadata)")
    return ARTIFACTS[name]


def read_any(path: str | Path) -> tuple[Artifact, pd.DataFrame]:
    artifact = artifact_of(path)
    return artifact, artifact.read(path)
