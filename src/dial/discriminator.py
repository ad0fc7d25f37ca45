"""The discriminator (METHOD.md §4; DIAL paper §3.4): real vs simulated user sessions, judged after
every user message, in one forward pass per session.

Model
    `AutoModelForTokenClassification` on the base backbone (for Llama-family checkpoints
    `LlamaForTokenClassification`: the causal decoder, so the output at a token only depends on the
    tokens before it) with **one** label: the output at a token is the log-odds that the session is
    real, logit = log p/(1−p), p = P(real | everything up to this token). One logit (not two classes)
    because the rewards are differences of log-odds, which a single logit gives directly and exactly.
    LoRA on every linear module of the backbone plus the fully trained `score` head (peft
    `modules_to_save`). Loaded from a causal-LM checkpoint (`models/base`), the head is new and
    initialised from the seed; the classifier dropout is 0 (LoRA dropout comes from the params).

Encoding (`SessionEncoder`, `encode_session`)
    An explicit ChatML rendering, tokenised piece by piece (so positions are exact and the tokens of
    a prefix never depend on what follows):

        <|im_start|>system\\n{context}<|im_end|>\\n            ← context end: p_0
        <|im_start|>user\\n{text}<|im_end|>\\n                 ← label at this <|im_end|>: p_t
        <|im_start|>assistant\\n{text or placeholder}<|im_end|>\\n
        ...

    The context is the `context_text` of the grounding real session (its own for a real session,
    the one of `real_session_id` for a simulated one). Message and context texts are tokenised with
    special tokens split (a literal "<|im_end|>" typed by a user stays text). The sequence ends at the
    last user message's <|im_end|> (trailing chatbot messages carry no label). Labels: the session's
    class (real = 1, simulated = 0) at the <|im_end|> of every user message, −100 elsewhere.

    view `full` (the paper's) shows every message as it was, chatbot text and turn structure
    included. `user_only` hides the chatbot (our real corpora talked to humans, not to our
    chatbots: a discriminator reading the chatbot would detect the chatbot, not the user) and the
    turn structure (issue #11): it shows the user's messages in order, with one ASSISTANT_PLACEHOLDER
    message before each user message but the first, whatever came between. Real users send bursts
    (several messages in a row), open after a chatbot greeting and get several chatbot messages in
    a row; the simulator, which writes exactly one message per turn after which the chatbot answers
    once, can do none of that, so a view that kept the real turn order would let the discriminator
    win on structure the simulator does not control. Placeholders carry no text, length or count:
    a real session and a simulated one with the same user messages encode to the same tokens, so
    the discriminator can only win on what the simulated user writes (and how many messages it
    sends, which it controls by ending the conversation). When the simulator can send bursts, the
    real turn order becomes something it controls and could be shown again.

Token budget (`max_tokens`)
    The context is never cut. Messages are kept from the start while they fit; the first user
    message that does not fit and everything after it are dropped (the tail, not the oldest
    messages), so every kept p_t is exactly what the model computes on the whole session: cutting
    the oldest messages would change what the model saw before each kept turn. Dropped user messages
    keep a row in the scores with status `over_max_tokens` (never silently lost); a context that
    alone exceeds the budget makes its session unscorable (`context_too_long`). `max_user_turns` (0 =
    off) cuts both classes after that many user turns, a burst of consecutive user messages counting
    once (`over_max_user_turns`): set it to the
    simulator's `simulate.max_turns`, or real sessions (longer than any simulated one) are told apart
    by their turn count alone.

p_0 and the context-end position
    p_0 (the belief before any user message, which r_1 = logit(p_1) − logit(p_0) needs) is the output
    at the context's <|im_end|>. With `train_context_end` (default) that position is trained too,
    with the session's label: a real session and its paired simulated session share the identical
    context prefix, so its optimum is the prior 0.5 (logit 0), i.e. p_0 is calibrated rather than an
    untrained extrapolation. It never counts in the metrics.

Sampling (`select_sessions`) — identical conditions for every simulator
    Pairs: each real session R that grounds at least one usable simulated session is paired with one
    of them (a seeded choice that depends on R and the sessions' order, not on the simulator's
    name: with the paired simulation protocol every simulator gets the same chatbot and simulation
    index for R). Both members of a pair are in the same split, so the context never appears on
    both sides of the split, and each context is seen once as real and once as simulated, so the
    context alone says nothing about the label. Pairs are ordered by a seeded hash of R: the first
    `n_valid` are validation, the next `n_train` training (per class; proportionally fewer, with a
    warning, when fewer pairs exist). With `valid_simulations: all` (default) a validation pair's
    context contributes every one of its usable simulations (one per chatbot and simulation index),
    not only the paired one: three times the held-out simulated sessions for the cost of scoring
    them. The real session is then paired with each and weighs as many (the `weight` column of the
    selection and of `valid_scores.csv`), so the metrics are those of the pairs, balanced per
    context. Training pairs stay one-to-one. Real sessions that ground no simulation and the other
    simulations of training contexts are unused (counted).

Training: a plain torch loop (AdamW, constant lr, gradient clipping, seeded shuffling), BCE with
logits on the labelled positions of each batch (mean over positions), bf16 autocast only if
`resolve_precision` says so. Scoring: batches of right-padded sessions (causal attention makes
right padding exact), inference mode, one pass per session.

Metrics (`discriminator_metrics`): positive class = real, a message is predicted real when
p_real ≥ 0.5 (logit ≥ 0); accuracy, F1 and MCC at user turns 1, 5, 10, 25 and overall over all
scored user messages of the validation sessions, each weighing its session's weight (`n_effective`,
Kish's effective sample size, is the n of their Wilson intervals). F1 and MCC are 0 when undefined (sklearn's
convention: no predicted and no true positive; a margin of the confusion matrix is empty).
Beside them the report carries `structure_baseline` (`dial.structure_baseline`): a logistic
regression on the structure alone of the same sessions, cut and split as here, with its 95 % Wilson
interval; how much a discriminator could win without reading the user's words.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dial.errors import DialError
from dial.evaluation.stats import effective_sample_size
from dial.stage import is_main_process, launched_distributed  # noqa: F401 (is_main_process: re-exported)
from dial.models import quiet_peft_deprecation
from dial.params import DiscriminatorParams, LoraParams, Precision, View  # noqa: F401 (re-exported)
from dial.prompting import user_messages_in_turns

log = logging.getLogger(__name__)

MANIFEST = "dial_model.json"
SELECTION_FILE = "selection.json"
ENCODING_VERSION = "chatml-explicit-v2"  # v2: user_only shows no turn structure
ASSISTANT_PLACEHOLDER = "[chatbot message]"
IGNORE_INDEX = -100
REAL, SIMULATED = 1, 0
SIMULATED_PREFIX = "simulated:"
METRIC_TURNS = (1, 5, 10, 25)


# Status of each user message in the scores.
SCORED = "scored"
OVER_MAX_TOKENS = "over_max_tokens"
OVER_MAX_USER_TURNS = "over_max_user_turns"
CONTEXT_TOO_LONG = "context_too_long"
NO_CONTEXT = "no_context"
STATUSES = (SCORED, OVER_MAX_TOKENS, OVER_MAX_USER_TURNS, CONTEXT_TOO_LONG, NO_CONTEXT)

SCORE_COLUMNS = [
    "session_id", "is_real", "turn_index", "user_turn_number", "status", "logit", "p_real", "logit_0", "p_0",
]

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@dataclass
class EncodedSession:
    """One session as one token sequence with the positions the discriminator reads."""

    session_id: str
    input_ids: list[int]
    context_end: int | None  # index of the context's <|im_end|> (p_0); None if the context is too long
    user_positions: list[int]  # index of the <|im_end|> of each *scored* user message, in order
    user_turn_indices: list[int]  # turn_index of every user message of the session (scored or not)
    user_status: list[str]  # status of every user message (SCORED first, then the reasons)
    label: int | None = None  # REAL / SIMULATED for training; None when only scoring

    @property
    def n_scored(self) -> int:
        return len(self.user_positions)

    @property
    def labels(self) -> list[int]:
        """Per-token labels: the session's class at each scored user message's end, −100 elsewhere."""
        if self.label is None:
            raise DialError(f"session {self.session_id}: encoded without a label")
        labels = [IGNORE_INDEX] * len(self.input_ids)
        for position in self.user_positions:
            labels[position] = self.label
        return labels

    def read_positions(self) -> list[int]:
        """Positions whose output is read: the context end (p_0) then each scored user message."""
        return ([self.context_end] if self.context_end is not None else []) + self.user_positions


class SessionEncoder:
    """Renders sessions into token ids (see the module docstring) with fixed markers."""

    def __init__(self, tokenizer, view: View = "user_only", max_tokens: int = 2048, max_user_turns: int = 0) -> None:
        if view not in ("full", "user_only"):
            raise DialError(f"discriminator view must be 'full' or 'user_only' (got {view!r})")
        self.tokenizer = tokenizer
        self.view = view
        self.max_tokens = max_tokens
        self.max_user_turns = max_user_turns
        markers = [f"{_IM_START}system\n", f"{_IM_START}user\n", f"{_IM_START}assistant\n", _IM_END, "\n"]
        # Markers are tokenised with special tokens recognised (one id each when the vocabulary has
        # ChatML tokens; plain text otherwise, which still works); texts with special tokens split.
        ids = tokenizer(markers, add_special_tokens=False)["input_ids"]
        self.header = {"system": ids[0], "user": ids[1], "assistant": ids[2]}
        self.end, self.newline = ids[3], ids[4]

    def _texts(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # transformers 5 leaves `split_special_tokens=True` set on the fast backend after the call,
        # which would silently change every later tokenisation with this tokenizer: restore it.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        before = backend.encode_special_tokens if backend is not None else None
        try:
            return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        finally:
            if backend is not None:
                backend.encode_special_tokens = before

    def shown_turns(self, turns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (role, text) messages the view shows: `full` all of them; `user_only` the user's
        messages, one placeholder before each but the first (see the module docstring)."""
        if self.view == "full":
            return list(turns)
        shown: list[tuple[str, str]] = []
        for role, text in turns:
            if role == "user":
                if shown:
                    shown.append(("assistant", ASSISTANT_PLACEHOLDER))
                shown.append(("user", text))
        return shown

    def encode(
        self,
        context_text: str | None,
        turns: Sequence[tuple[str, str]],
        label: int | None = None,
        session_id: str = "",
    ) -> EncodedSession:
        """`turns` = the session's (role, text) in turn order (turn_index = position)."""
        turns = list(turns)
        user_turns = [i for i, (role, _) in enumerate(turns) if role == "user"]
        if context_text is None:
            return EncodedSession(session_id, [], None, [], user_turns, [NO_CONTEXT] * len(user_turns), label)
        shown = self.shown_turns(turns)
        # max_user_turns counts user turns (bursts count once), as simulate.max_turns does.
        n_kept_users = (
            user_messages_in_turns([role for role, _ in turns], self.max_user_turns) if self.max_user_turns else len(user_turns)
        )
        if n_kept_users < len(user_turns):
            last = [i for i, (role, _) in enumerate(shown) if role == "user"][n_kept_users - 1]
            shown = shown[: last + 1]
        text_ids = self._texts([context_text] + [text for _, text in shown])
        ids = self.header["system"] + text_ids[0] + self.end
        if len(ids) > self.max_tokens:
            return EncodedSession(session_id, [], None, [], user_turns, [CONTEXT_TOO_LONG] * len(user_turns), label)
        context_end = len(ids) - 1
        keep = len(ids)  # the sequence is cut after the last kept user message's <|im_end|>
        positions: list[int] = []
        for (role, _), piece in zip(shown, text_ids[1:]):
            message = self.newline + self.header[role] + piece + self.end
            if len(ids) + len(message) > self.max_tokens:
                break
            ids.extend(message)
            if role == "user":
                keep = len(ids)
                positions.append(keep - 1)
        status = [SCORED] * len(positions)
        status += [OVER_MAX_TOKENS] * (n_kept_users - len(positions))
        status += [OVER_MAX_USER_TURNS] * (len(user_turns) - n_kept_users)
        return EncodedSession(session_id, ids[:keep], context_end, positions, user_turns, status, label)


def encode_session(
    tokenizer,
    context_text: str | None,
    turns: Sequence[tuple[str, str]],
    view: View = "user_only",
    max_tokens: int = 2048,
    max_user_turns: int = 0,
    label: int | None = None,
    session_id: str = "",
) -> EncodedSession:
    """One session → one token sequence, label positions and the context end (see `SessionEncoder`)."""
    return SessionEncoder(tokenizer, view, max_tokens, max_user_turns).encode(context_text, turns, label, session_id)


def is_real(sessions: pd.DataFrame) -> pd.Series:
    """Real sessions are those whose `source` is not `simulated:<simulator>`."""
    return ~sessions["source"].astype(str).str.startswith(SIMULATED_PREFIX)


def grounding_session_ids(sessions: pd.DataFrame) -> pd.Series:
    """The real session whose context grounds each session: itself for a real session, the
    `real_session_id` of its generation metadata for a simulated one."""
    real = is_real(sessions)
    grounding = sessions["session_id"].astype(str).copy()
    for i in np.flatnonzero(~real.to_numpy()):
        row = sessions.iloc[i]
        try:
            real_session_id = json.loads(row["metadata"]).get("real_session_id")
        except (TypeError, ValueError):
            real_session_id = None
        if not real_session_id:
            raise DialError(f"simulated session {row['session_id']}: no real_session_id in its metadata")
        grounding.iloc[i] = str(real_session_id)
    return grounding


def encode_frames(
    encoder: SessionEncoder,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    with_labels: bool = False,
) -> list[EncodedSession]:
    """Encode every session of `sessions` (canonical frames), in the order of `sessions`."""
    context_of = dict(zip(contexts["session_id"].astype(str), contexts["context_text"]))
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    turns_of = {
        session_id: list(zip(group["role"], group["text"]))
        for session_id, group in ordered.groupby("session_id", sort=False)
    }
    grounding = grounding_session_ids(sessions)
    labels = np.where(is_real(sessions), REAL, SIMULATED)
    encoded = []
    for session_id, grounded_on, label in zip(sessions["session_id"].astype(str), grounding, labels):
        encoded.append(
            encoder.encode(
                context_of.get(grounded_on),
                turns_of.get(session_id, []),
                int(label) if with_labels else None,
                session_id,
            )
        )
    return encoded


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def resolve_backbone(backbone: str, base_model_dir: Path) -> str:
    """Where the discriminator's decoder comes from: `discriminator.backbone`, or the simulator's
    base model folder when it is empty. A path that does not exist is an error here, not a hub
    lookup (a hub id is `org/name`, never absolute or relative to `.`/`~`)."""
    if not backbone:
        return Path(base_model_dir).as_posix()
    if Path(backbone).expanduser().is_dir():
        return Path(backbone).expanduser().as_posix()
    if backbone.startswith(("/", "./", "../", "~")) or Path(backbone).exists() or backbone.count("/") > 1:
        raise DialError(f"discriminator.backbone: {backbone!r} is not a checkpoint folder (and not a hub id `org/name`)")
    return backbone  # a hub id: transformers fetches it (or finds it in its cache)


def load_backbone_tokenizer(backbone: str):
    """The tokenizer of a `discriminator.backbone` (a folder or a hub id). The session encoding
    writes its ChatML markers as text, so any tokenizer works; padding needs a pad or eos id."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=Path(backbone).is_dir())
    except (OSError, ValueError) as exc:
        raise DialError(f"discriminator.backbone {backbone}: cannot load its tokenizer: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise DialError(f"discriminator.backbone {backbone}: its tokenizer has neither a pad nor an eos token")
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is (as in dial.models)
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_backbone(base_model_dir: Path | str, seed: int = 0, n_layers: int = 0):
    """The token-classification model on the base checkpoint (a folder, or a hub id of a
    `discriminator.backbone`), one label; a newly initialised `score` head is drawn from `seed`.
    `n_layers` > 0 keeps only the first n decoder layers (the rest of the checkpoint is not
    loaded): a shallower reader, several times cheaper on a CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    local = Path(base_model_dir).is_dir()
    torch.manual_seed(seed)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is expected here
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(
            str(base_model_dir), num_labels=1, id2label={0: "real"}, label2id={"real": 0}, local_files_only=local
        )
        config.classifier_dropout = 0.0
        if n_layers and n_layers < config.num_hidden_layers:
            config.num_hidden_layers = n_layers
            if getattr(config, "layer_types", None):
                config.layer_types = config.layer_types[:n_layers]
        model = AutoModelForTokenClassification.from_pretrained(
            str(base_model_dir), config=config, dtype=torch.float32, local_files_only=local
        )
    except (OSError, ValueError) as exc:
        raise DialError(f"{base_model_dir}: cannot load a token-classification model: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if not hasattr(model, "score"):
        raise DialError(f"{base_model_dir}: {type(model).__name__} has no `score` head (only decoder backbones are supported)")
    return model


def discriminator_lora_config(lora: LoraParams, model):
    """The SFT LoRA config (`training.common.lora_config`) for token classification: `all-linear`
    resolved to the backbone's linear modules (never the head), the `score` head fully trained."""
    import torch

    from dial.training.common import lora_config

    config = lora_config(lora)
    targets = config.target_modules
    if isinstance(targets, str) and targets == "all-linear":
        backbone = getattr(model, model.base_model_prefix)
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, torch.nn.Linear)})
    return dataclasses.replace(config, task_type="TOKEN_CLS", target_modules=targets, modules_to_save=["score"])


def new_discriminator(base_model_dir: Path | str, params: DiscriminatorParams):
    """A fresh LoRA discriminator on the base checkpoint (head and LoRA initialised from the seed)."""
    import torch
    from peft import get_peft_model

    model = load_backbone(base_model_dir, params.seed, params.n_layers)
    torch.manual_seed(params.seed)
    with quiet_peft_deprecation():
        return get_peft_model(model, discriminator_lora_config(params.lora, model))


def load_discriminator(model_dir: Path, base_model_dir: Path | None = None, device=None):
    """(model in eval mode on `device`, tokenizer, manifest) of a trained discriminator folder.
    `base_model_dir`: where the simulator's base model is now, for a discriminator that read with
    it (a `discriminator.backbone` of its own is loaded from where the manifest names it).
    `device`: default CUDA when present, else the CPU (scoring in the discriminator and pairs
    stages runs where the model is)."""
    from peft import PeftModel

    from dial.simulation.generation import default_device

    from dial.models import load_tokenizer

    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        raise DialError(f"{model_dir}: not a discriminator folder (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("kind") != "discriminator":
        raise DialError(f"{model_dir}: {MANIFEST} describes a {manifest.get('kind')!r} model, not a discriminator")
    own_backbone = manifest.get("params", {}).get("backbone", "")
    base_model_dir = manifest["base_model"] if own_backbone or not base_model_dir else base_model_dir
    n_layers = int(manifest.get("params", {}).get("n_layers", 0))
    backbone = load_backbone(base_model_dir, seed=0, n_layers=n_layers)  # the head is replaced by the saved one
    with quiet_peft_deprecation():
        model = PeftModel.from_pretrained(backbone, str(model_dir))
    model.to(device or default_device()).eval()
    return model, load_tokenizer(model_dir), manifest


# --------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------


def _autocast(precision: str, device):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model_device(model):
    return next(model.parameters()).device


def _pad_batch(batch: Sequence[EncodedSession], pad_id: int, device):
    """Right-padded input ids and attention mask (causal attention: padding after a sequence never
    changes its outputs)."""
    import torch

    length = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids, dtype=torch.long)
        attention[row, : len(item.input_ids)] = 1
    return input_ids.to(device), attention.to(device)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def forward_logits(
    model, tokenizer, encoded: Sequence[EncodedSession], batch_size: int = 4, precision: str = "fp32", progress: bool = False
) -> list[np.ndarray]:
    """For each session, the float64 logits at `read_positions()` (p_0 first, then each scored
    user message), from one forward pass per session; sessions are batched by similar length."""
    import torch

    device = _model_device(model)
    pad_id = _pad_id(tokenizer)
    results: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    todo = sorted((i for i, item in enumerate(encoded) if item.input_ids), key=lambda i: -len(encoded[i].input_ids))
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(todo), desc="score", unit="session", disable=not progress)
    try:
        with torch.inference_mode(), _autocast(precision, device):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                input_ids, attention = _pad_batch([encoded[i] for i in chunk], pad_id, device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits[..., 0].double().cpu()
                for row, i in enumerate(chunk):
                    results[i] = logits[row, encoded[i].read_positions()].numpy()
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return results


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def scores_frame(encoded: Sequence[EncodedSession], logits: Sequence[np.ndarray], real: Sequence[bool]) -> pd.DataFrame:
    """One row per user message of every session (scored or not: see `status`)."""
    rows: dict[str, list] = {column: [] for column in SCORE_COLUMNS if column not in ("p_real", "p_0")}
    for item, values, session_is_real in zip(encoded, logits, real, strict=True):
        has_p0 = item.context_end is not None
        logit_0 = float(values[0]) if has_p0 and len(values) else math.nan
        scored = list(values[1:]) if has_p0 else []
        for number, (turn_index, status) in enumerate(zip(item.user_turn_indices, item.user_status), start=1):
            rows["session_id"].append(item.session_id)
            rows["is_real"].append(bool(session_is_real))
            rows["turn_index"].append(int(turn_index))
            rows["user_turn_number"].append(number)
            rows["status"].append(status)
            rows["logit"].append(float(scored[number - 1]) if status == SCORED else math.nan)
            rows["logit_0"].append(logit_0)
    frame = pd.DataFrame(rows)
    frame["is_real"] = frame["is_real"].astype(bool)
    frame["turn_index"] = frame["turn_index"].astype("int64")
    frame["user_turn_number"] = frame["user_turn_number"].astype("int64")
    frame["logit"] = frame["logit"].astype("float64")
    frame["logit_0"] = frame["logit_0"].astype("float64")
    frame["p_real"] = _sigmoid(frame["logit"].to_numpy())
    frame["p_0"] = _sigmoid(frame["logit_0"].to_numpy())
    return frame[SCORE_COLUMNS].sort_values(["session_id", "turn_index"], kind="stable").reset_index(drop=True)


def score_sessions(
    model,
    tokenizer,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    view: View,
    max_tokens: int = 2048,
    max_user_turns: int = 0,
    batch_size: int = 4,
    precision: Precision = "auto",
    progress: bool = False,
) -> pd.DataFrame:
    """Discriminator scores of every user message of `sessions` (real and/or simulated, canonical
    frames), one forward pass per session: columns SCORE_COLUMNS, one row per user message.

    `logit` / `p_real` are NaN for user messages that were not scored (`status` says why);
    `logit_0` / `p_0` (the output at the end of the context) repeat on every row of a session.
    Use the view and budgets the discriminator was trained with (its `dial_model.json`).
    """
    from dial.training.common import resolve_precision

    resolved = resolve_precision(precision, _model_device(model))
    encoder = SessionEncoder(tokenizer, view, max_tokens, max_user_turns)
    encoded = encode_frames(encoder, sessions, messages, contexts)
    logits = forward_logits(model, tokenizer, encoded, batch_size, resolved, progress)
    return scores_frame(encoded, logits, list(is_real(sessions)))


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int], weights: Sequence[float] | None = None) -> dict:
    """accuracy, F1 (positive = 1) and MCC; None when there is no example. F1 / MCC are 0 when
    undefined (as sklearn). `weights` (one per example, as sklearn's sample_weight) weigh the
    confusion matrix; n, n_real and n_simulated count examples, and unequal weights add
    `n_effective`, Kish's effective sample size (Σw)² / Σw², which the Wilson interval uses."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    n = int(y_true.size)
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or (weights <= 0).any():
        raise ValueError("binary_metrics: one positive weight per example")
    counts = {"n": n, "n_real": int(y_true.sum()), "n_simulated": int((~y_true).sum())}
    if n == 0:
        return {"accuracy": None, "f1": None, "mcc": None, **counts}
    if not np.all(weights == weights[0]):
        counts["n_effective"] = round(effective_sample_size(weights), 3)
    tp = float(weights[y_true & y_pred].sum())
    tn = float(weights[~y_true & ~y_pred].sum())
    fp = float(weights[~y_true & y_pred].sum())
    fn = float(weights[y_true & ~y_pred].sum())
    f1_denominator = 2 * tp + fp + fn
    mcc_denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": round((tp + tn) / (tp + tn + fp + fn), 6),
        "f1": round(2 * tp / f1_denominator, 6) if f1_denominator else 0.0,
        "mcc": round((tp * tn - fp * fn) / mcc_denominator, 6) if mcc_denominator else 0.0,
        **counts,
    }


def discriminator_metrics(scores_real: pd.DataFrame, scores_sim: pd.DataFrame, turns: Sequence[int] = METRIC_TURNS) -> dict:
    """Held-out metrics: {"overall": {...}, "turn_1": {...}, ...}, each with accuracy, f1, mcc, n,
    n_real, n_simulated. Positive = real; predicted real iff p_real >= 0.5 (logit >= 0). Only
    scored user messages count; a turn without data has n = 0 and null metrics. A `weight` column
    (the selection's session weight: a real session held out with k simulations weighs k) weighs
    each message; without it every message weighs 1."""
    frames = []
    for frame, label in ((scores_real, True), (scores_sim, False)):
        scored = frame[frame["logit"].notna()]
        weight = scored["weight"].to_numpy(dtype=np.float64) if "weight" in scored else np.ones(len(scored))
        frames.append(pd.DataFrame({
            "turn": scored["user_turn_number"].to_numpy(), "y": label, "pred": scored["logit"].to_numpy() >= 0, "weight": weight,
        }))
    data = pd.concat(frames, ignore_index=True)
    result = {"overall": binary_metrics(data["y"], data["pred"], data["weight"])}
    for turn in turns:
        at = data[data["turn"] == turn]
        result[f"turn_{turn}"] = binary_metrics(at["y"], at["pred"], at["weight"])
    return result


# --------------------------------------------------------------------------------------------
# Session selection
# --------------------------------------------------------------------------------------------


def _stable_int(*parts) -> int:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _split_sizes(n_pairs: int, n_train: int, n_valid: int) -> tuple[int, int]:
    """(train, valid) pairs: the requested numbers, or proportionally fewer (≥ 1 valid when asked
    for and at least 2 pairs exist)."""
    if n_pairs >= n_train + n_valid:
        return n_train, n_valid
    valid = round(n_pairs * n_valid / (n_train + n_valid))
    if n_valid > 0 and n_pairs >= 2:
        valid = min(max(valid, 1), n_pairs - 1)
    return n_pairs - valid, valid


@dataclass
class Selection:
    frame: pd.DataFrame  # session_id, grounding_session_id, is_real, split ("train"/"valid"), weight
    encoded: dict[str, EncodedSession]
    counts: dict = field(default_factory=dict)

    def items(self, split: str) -> list[EncodedSession]:
        ids = self.frame.loc[self.frame["split"] == split, "session_id"]
        return [self.encoded[session_id] for session_id in ids]

    def ids(self) -> dict:
        out = {}
        for split in ("train", "valid"):
            part = self.frame[self.frame["split"] == split]
            out[split] = {
                "real": sorted(part.loc[part["is_real"], "session_id"]),
                "simulated": sorted(part.loc[~part["is_real"], "session_id"]),
            }
        return out


def select_sessions(
    params: DiscriminatorParams,
    encoder: SessionEncoder,
    real_sessions: pd.DataFrame,
    real_messages: pd.DataFrame,
    simulated_sessions: pd.DataFrame,
    simulated_messages: pd.DataFrame,
    contexts: pd.DataFrame,
) -> Selection:
    """Balanced, paired, seeded train/valid sessions (see the module docstring), encoded with labels."""
    if (~is_real(real_sessions)).any():
        raise DialError("discriminator: the real sessions include simulated ones (source 'simulated:...')")
    if is_real(simulated_sessions).any():
        raise DialError("discriminator: the simulated sessions include real ones (source not 'simulated:...')")
    sim_grounding = grounding_session_ids(simulated_sessions)
    real_ids = set(real_sessions["session_id"].astype(str))
    grounded = sim_grounding.isin(real_ids)
    candidates_real = real_sessions[real_sessions["session_id"].astype(str).isin(set(sim_grounding))]
    candidates_sim = simulated_sessions[grounded.to_numpy()]

    real_encoded = encode_frames(encoder, candidates_real, real_messages, contexts, with_labels=True)
    sim_encoded = encode_frames(encoder, candidates_sim, simulated_messages, contexts, with_labels=True)
    usable_real = {item.session_id: item for item in real_encoded if item.n_scored > 0}
    sims_of: dict[str, list[EncodedSession]] = {}
    for item, grounding in zip(sim_encoded, sim_grounding[grounded.to_numpy()]):
        if item.n_scored > 0:
            sims_of.setdefault(grounding, []).append(item)

    pairs = []
    for real_id in sorted(usable_real):
        sims = sorted(sims_of.get(real_id, []), key=lambda item: item.session_id)
        if sims:
            pick = sims[_stable_int(params.seed, "pick", real_id) % len(sims)]
            pairs.append((_stable_int(params.seed, "order", real_id), real_id, pick.session_id))
    pairs.sort()
    n_train, n_valid = _split_sizes(len(pairs), params.n_train, params.n_valid)
    if (n_train, n_valid) != (params.n_train, params.n_valid):
        log.warning(
            "discriminator: only %d usable real/simulated pairs: %d train + %d valid (asked for %d + %d)",
            len(pairs), n_train, n_valid, params.n_train, params.n_valid,
        )
    rows = []
    for rank, (_, real_id, sim_id) in enumerate(pairs[: n_valid + n_train]):
        split = "valid" if rank < n_valid else "train"
        sim_ids = [sim_id]
        if split == "valid" and params.valid_simulations == "all":
            sim_ids += [item.session_id for item in sorted(sims_of[real_id], key=lambda item: item.session_id) if item.session_id != sim_id]
        # The real session is paired with each of its held-out simulations: it weighs as many.
        rows.append({"session_id": real_id, "grounding_session_id": real_id, "is_real": True, "split": split, "weight": float(len(sim_ids))})
        for held_out_id in sim_ids:
            rows.append({"session_id": held_out_id, "grounding_session_id": real_id, "is_real": False, "split": split, "weight": 1.0})
    frame = pd.DataFrame(rows, columns=["session_id", "grounding_session_id", "is_real", "split", "weight"])
    encoded = {**usable_real, **{item.session_id: item for items in sims_of.values() for item in items}}
    encoded = {session_id: encoded[session_id] for session_id in frame["session_id"]}

    def status_counts(items: Sequence[EncodedSession]) -> dict:
        statuses = [status for item in items for status in item.user_status]
        return {status: statuses.count(status) for status in STATUSES}

    selected = list(encoded.values())
    split_of = dict(zip(frame["session_id"], frame["split"]))
    counts = {
        "real_sessions_input": int(len(real_sessions)),
        "simulated_sessions_input": int(len(simulated_sessions)),
        "simulated_sessions_not_grounded_on_given_real": int((~grounded).sum()),
        "real_sessions_grounding_simulations": int(len(candidates_real)),
        "real_sessions_unusable": int(len(real_encoded) - len(usable_real)),  # no scorable user message
        "simulated_sessions_unusable": int(sum(item.n_scored == 0 for item in sim_encoded)),
        "pairs_available": len(pairs),
        "pairs_train": n_train,
        "pairs_valid": n_valid,
        "sessions_train": 2 * n_train,
        "sessions_valid": int((frame["split"] == "valid").sum()),
        "simulated_sessions_valid": int(((frame["split"] == "valid") & ~frame["is_real"]).sum()),
        "simulated_sessions_unused": int(len(candidates_sim) - (~frame["is_real"]).sum()),
        "user_messages_selected": status_counts(selected),
        "labelled_positions_train": int(sum(item.n_scored for item in selected if split_of[item.session_id] == "train")),
        "labelled_positions_valid": int(sum(item.n_scored for item in selected if split_of[item.session_id] == "valid")),
        "tokens_train": int(sum(len(item.input_ids) for item in selected if split_of[item.session_id] == "train")),
    }
    return Selection(frame.reset_index(drop=True), encoded, counts)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def selection_structure_baseline(
    selection: Selection, real_messages: pd.DataFrame, simulated_messages: pd.DataFrame, tokenizer, cap_tokens: int = 0
) -> dict:
    """The structure-only baseline (`dial.structure_baseline`) on the selected sessions and split,
    each session cut after its last scored user message, as the discriminator reads it."""
    from dial.models import count_tokens
    from dial.structure_baseline import cut_after_user_message, structure_baseline

    messages = pd.concat([real_messages, simulated_messages], ignore_index=True)
    messages = messages[messages["session_id"].isin(set(selection.frame["session_id"]))]
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    turns_of = {
        session_id: list(zip(group["role"], group["text"])) for session_id, group in ordered.groupby("session_id", sort=False)
    }
    splits, valid_weights = {"train": [], "valid": []}, []
    for session_id, session_is_real, split, weight in selection.frame[["session_id", "is_real", "split", "weight"]].itertuples(index=False):
        turns = cut_after_user_message(turns_of[session_id], selection.encoded[session_id].n_scored)
        splits[split].append((turns, bool(session_is_real)))
        if split == "valid":
            valid_weights.append(float(weight))
    return structure_baseline(
        splits["train"], splits["valid"], lambda texts: count_tokens(tokenizer, texts), cap_tokens, valid_weights
    )


@dataclass
class TrainResult:
    summary: dict  # counts, losses, precision, sizes (no timings: reports must be reproducible)
    selection: pd.DataFrame  # session_id, grounding_session_id, is_real, split
    valid_scores: pd.DataFrame  # score_sessions columns, for the validation sessions
    metrics: dict  # discriminator_metrics of the validation sessions
    losses: list[tuple[int, float]]  # (step, batch loss)


def _loss_targets(batch: Sequence[EncodedSession], length: int, train_context_end: bool):
    import torch

    targets = torch.full((len(batch), length), float(IGNORE_INDEX))
    for row, item in enumerate(batch):
        targets[row, item.user_positions] = float(item.label)
        if train_context_end and item.context_end is not None:
            targets[row, item.context_end] = float(item.label)
    return targets


def epoch_batches(items: Sequence[EncodedSession], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch's batches of item indices: a seeded shuffle, then sessions of similar length
    batched together (sorted within windows of 8 batches), batches in seeded order. Sessions are
    padded to the longest in their batch: random pairs of 1k- and 2k-token sessions ran a third
    padding."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(items[i].input_ids))
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_loop(
    model, tokenizer, items: Sequence[EncodedSession], params: DiscriminatorParams, precision: str, progress: bool = True,
    accelerator=None,
) -> list[tuple[int, float]]:
    """AdamW on the trainable (LoRA + head) parameters, BCE with logits on the labelled positions;
    seeded order each epoch. Returns the loss of every step.

    Under `accelerate launch` (`accelerator` with several processes, DDP) each step's batch is
    `batch_size` sessions per process: the step's global batch is drawn exactly as one process
    drawing `batch_size` × processes would, and each process takes every n-th session of it. Each
    process's loss is its sum over labelled positions divided by the step's total count (summed
    over processes) × processes, so DDP's gradient average is the one-process gradient."""
    import torch
    import torch.nn.functional as F

    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    device = _model_device(model)
    pad_id = _pad_id(tokenizer)
    global_batch = params.batch_size * world
    steps_per_epoch = math.ceil(len(items) / global_batch)
    losses: list[tuple[int, float]] = []
    model.train()
    torch.manual_seed(params.seed)
    bar = tqdm(total=len(items) * params.epochs, desc="discriminator", unit="session", disable=not progress or rank != 0)
    started, tokens = time.perf_counter(), 0
    try:
        for epoch in range(params.epochs):
            for step, indices in enumerate(epoch_batches(items, global_batch, _stable_int(params.seed, "epoch", epoch))):
                batch = [items[i] for i in indices[rank::world]]
                if batch:
                    input_ids, attention = _pad_batch(batch, pad_id, device)
                    targets = _loss_targets(batch, input_ids.shape[1], params.train_context_end).to(device)
                    mask = targets != IGNORE_INDEX
                    with _autocast(precision, device):
                        logits = model(input_ids=input_ids, attention_mask=attention).logits[..., 0]
                    loss_sum = F.binary_cross_entropy_with_logits(logits[mask].float(), targets[mask], reduction="sum")
                    count = torch.tensor(float(mask.sum()), device=device)
                    tokens += int(attention.sum())
                else:  # fewer sessions than processes in the last batch: take part in the gradient sync with 0
                    loss_sum = sum(parameter.sum() for parameter in trainable) * 0.0
                    count = torch.tensor(0.0, device=device)
                total = accelerator.reduce(count, reduction="sum") if world > 1 else count
                loss = loss_sum / total.clamp(min=1.0) * world
                if accelerator is not None:
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(trainable, params.max_grad_norm)
                else:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss = accelerator.reduce(loss.detach() / world, reduction="sum") if world > 1 else loss.detach()
                losses.append((epoch * steps_per_epoch + step + 1, float(step_loss)))
                seconds = time.perf_counter() - started
                bar.update(len(indices))
                bar.set_postfix({"loss": f"{losses[-1][1]:.4f}", "tok/s": f"{tokens * world / max(seconds, 1e-9):.0f}"}, refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    log.info("discriminator: %d steps, %d tokens in %.1f s (%.0f tokens/s in this process, %d process(es))",
             len(losses), tokens, seconds, tokens / max(seconds, 1e-9), world)
    model.eval()
    return losses


def train_discriminator(
    params: DiscriminatorParams,
    real_sessions: pd.DataFrame,
    real_messages: pd.DataFrame,
    simulated_sessions: pd.DataFrame,
    simulated_messages: pd.DataFrame,
    contexts: pd.DataFrame,
    base_model_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train a discriminator on real vs one simulator's sessions, score its validation sessions,
    and write the model folder atomically: LoRA adapter + score head (adapter_model.safetensors),
    tokenizer, `dial_model.json` (view, budgets, params, counts) and `selection.json` (the session
    ids of each split and class)."""
    from dial import io
    from dial.models import load_tokenizer
    from dial.training.common import parameter_counts, resolve_precision, save_adapter, sha256_dir, training_device

    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    backbone = resolve_backbone(params.backbone, base_model_dir)
    simulator_tokenizer = load_tokenizer(base_model_dir)
    tokenizer = simulator_tokenizer if backbone == base_model_dir.as_posix() else load_backbone_tokenizer(backbone)
    encoder = SessionEncoder(tokenizer, params.view, params.max_tokens, params.max_user_turns)
    selection = select_sessions(params, encoder, real_sessions, real_messages, simulated_sessions, simulated_messages, contexts)
    # The at-cap feature counts tokens as the simulator generated them: with its tokenizer.
    baseline = selection_structure_baseline(
        selection, real_messages, simulated_messages, simulator_tokenizer, params.generation_cap_tokens
    )
    train_items = selection.items("train")
    if not train_items:
        raise DialError(
            "discriminator: no real/simulated pair to train on (a pair is a real session and a simulated session "
            f"grounded on it, both with a user message within discriminator.max_tokens); counts: {selection.counts}"
        )
    accelerator = None
    if launched_distributed():  # under `accelerate launch`: DDP over the launched processes
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: processes over gloo
    device = accelerator.device if accelerator is not None else training_device()
    precision = resolve_precision(params.precision, device)
    log.info(
        "discriminator (%s view): %d train + %d valid pairs, %d training tokens/epoch, precision %s, device %s",
        params.view, selection.counts["pairs_train"], selection.counts["pairs_valid"], selection.counts["tokens_train"], precision, device,
    )
    model = new_discriminator(backbone, params).to(device)
    losses = train_loop(model, tokenizer, train_items, params, precision, progress, accelerator)
    if accelerator is not None:
        model = accelerator.unwrap_model(model)

    valid_items = selection.items("valid")
    valid_logits = forward_logits(model, tokenizer, valid_items, params.score_batch_size, precision)
    valid_scores = scores_frame(valid_items, valid_logits, [item.label == REAL for item in valid_items])
    valid_scores["weight"] = valid_scores["session_id"].map(dict(zip(selection.frame["session_id"], selection.frame["weight"])))
    metrics = discriminator_metrics(valid_scores[valid_scores["is_real"]], valid_scores[~valid_scores["is_real"]])

    trainable, total = parameter_counts(model)
    last_epoch = [loss for step, loss in losses if step > len(losses) - math.ceil(len(train_items) / params.batch_size)]
    summary = {
        **selection.counts,
        "view": params.view,
        "epochs": params.epochs,
        "steps": len(losses),
        "first_step_loss": round(losses[0][1], 6),
        "final_step_loss": round(losses[-1][1], 6),
        "last_epoch_mean_loss": round(sum(last_epoch) / len(last_epoch), 6),
        "precision": precision,
        "trainable_params": trainable,
        "total_params": total,
        "valid_accuracy": metrics["overall"]["accuracy"],
        "structure_baseline": baseline,
    }
    manifest = {
        "kind": "discriminator",
        "base_model": backbone,
        "base_model_sha256": sha256_dir(Path(backbone)) if Path(backbone).is_dir() else None,
        "simulator_base_model": base_model_dir.as_posix(),
        "adapter": "lora",
        "num_labels": 1,
        "output": "logit = log-odds that the session is real, after each token (causal)",
        "encoding": ENCODING_VERSION,
        "assistant_placeholder": ASSISTANT_PLACEHOLDER,
        "view": params.view,
        "max_tokens": params.max_tokens,
        "max_user_turns": params.max_user_turns,
        "params": params.model_dump(mode="json"),
        "seed": params.seed,
        **summary,
    }
    summary["processes"] = accelerator.num_processes if accelerator is not None else 1
    manifest["processes"] = summary["processes"]
    if is_main_process():  # every process holds the same model: one writes
        with io.atomic_output_dir(out_dir) as staging:
            save_adapter(model, tokenizer, staging)
            io.write_json_atomic(staging / SELECTION_FILE, selection.ids())
            io.write_json_atomic(staging / MANIFEST, manifest)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return TrainResult(summary, selection.frame, valid_scores, metrics, losses)


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------


def run_discriminator(
    simulator_id: str,
    params: DiscriminatorParams,
    real_dir: Path,
    simulated_dir: Path,
    contexts_file: Path,
    base_model_dir: Path,
    out_dir: Path,
    report_file: Path,
    valid_scores_file: Path,
    loss_file: Path,
    progress: bool = True,
) -> dict:
    """The `discriminator@<simulator>` stage: a fresh discriminator on real vs this simulator's
    sessions (identical conditions for every simulator), its held-out metrics in `report_file`,
    the per-turn validation scores (CSV, for plots and audits) and the loss per step."""
    from dial import io, paths

    real_sessions = io.SESSIONS.read(paths.sessions_file(real_dir))
    real_messages = io.MESSAGES.read(paths.messages_file(real_dir))
    simulated_sessions = io.SESSIONS.read(paths.sessions_file(simulated_dir))
    simulated_messages = io.MESSAGES.read(paths.messages_file(simulated_dir))
    contexts = io.CONTEXTS.read(contexts_file)
    result = train_discriminator(
        params, real_sessions, real_messages, simulated_sessions, simulated_messages, contexts,
        base_model_dir, out_dir, progress,
    )
    report = {"simulator": simulator_id, "metrics": result.metrics, **result.summary}
    if not is_main_process():
        return report
    io.write_json_atomic(report_file, report)
    scores = result.valid_scores.copy()
    scores["simulator"] = simulator_id
    io.write_text_atomic(valid_scores_file, scores.to_csv(index=False, float_format="%.6f"))
    io.write_text_atomic(loss_file, "step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in result.losses))
    overall = result.metrics["overall"]
    log.info(
        "discriminator@%s: held-out accuracy %s, F1 %s, MCC %s on %d user messages",
        simulator_id, overall["accuracy"], overall["f1"], overall["mcc"], overall["n"],
    )
    baseline = result.summary["structure_baseline"]
    log.info(
        "discriminator@%s: structure-only baseline accuracy %s (95%% CI %s–%s) on %d validation sessions, trained on %d",
        simulator_id, baseline["accuracy"], baseline["ci_low"], baseline["ci_high"], baseline["n"], baseline["train_n"],
    )
    return report
