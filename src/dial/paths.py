"""Where each stage reads and writes, relative to the repository root (mirrors dvc.yaml)."""

from pathlib import Path

MODELS = Path("models")
BASE_MODEL_DIR = MODELS / "base"

DATA = Path("data")
INGESTED_DIR = DATA / "ingested"
QUARANTINE_DIR = DATA / "quarantine"
SCRUBBED_DIR = DATA / "scrubbed"
CONTEXTS_FILE = DATA / "contexts" / "contexts.parquet"
SPLITS_FILE = DATA / "splits" / "splits.parquet"
SFT_SAMPLES_FILE = DATA / "sft" / "samples.parquet"

REPORTS = Path("reports")
DATA_REPORT = REPORTS / "data.json"
PII_REPORT = REPORTS / "pii.json"
CONTEXTS_REPORT = REPORTS / "contexts.json"
SPLIT_REPORT = REPORTS / "split.json"
SFT_SAMPLES_REPORT = REPORTS / "sft_samples.json"


def sessions_file(directory: Path) -> Path:
    return directory / "sessions.parquet"


def messages_file(directory: Path) -> Path:
    return directory / "messages.parquet"


def users_file(directory: Path) -> Path:
    return directory / "users.parquet"
