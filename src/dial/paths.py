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


# Simulators: models/simulator/<id>/ holds a LoRA adapter on models/base ("zero-shot" has none).
SIMULATOR_DIR = MODELS / "simulator"
SFT_MODEL_DIR = SIMULATOR_DIR / "sft"
SFT_REPORT = REPORTS / "sft.json"
SFT_LOSS = REPORTS / "sft" / "loss.csv"
SFT_CHECKPOINTS = Path(".dial") / "checkpoints" / "sft"

SIMULATED_DIR = DATA / "simulated"
RESUME_DIR = Path(".dial") / "resume"
ZERO_SHOT = "zero-shot"


def simulator_adapter_dir(simulator_id: str) -> Path | None:
    """The simulator's adapter directory; None for the zero-shot base model."""
    return None if simulator_id == ZERO_SHOT else SIMULATOR_DIR / simulator_id


def simulated_dir(simulator_id: str) -> Path:
    return SIMULATED_DIR / simulator_id


def simulate_report(simulator_id: str) -> Path:
    return REPORTS / "simulate" / f"{simulator_id}.json"


def simulate_resume_file(simulator_id: str) -> Path:
    return RESUME_DIR / f"simulate-{simulator_id}.json"
