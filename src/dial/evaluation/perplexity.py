"""Held-out perplexity of the real users' messages under each simulator (issue #11; METHOD.md §3, §6).

The cheapest realism signal, and one that stays meaningful with few sessions: how likely does a
simulator find what held-out real users actually wrote? Teacher-forced, exactly as SFT scores a
sample (`dial.sft_samples`, `dial.training.sft`): the prompt is the one the simulator sees when it
simulates (`prompting.simulator_messages`: the context as system message, the session so far
flipped) rendered with the chat template and a generation prompt; the scored tokens are the real
user turn as the completion (a burst of consecutive user messages joined by the message separator,
as SFT trains and the simulator writes it), with what the template appends after it (the
end-of-turn token), split from the prompt where trl splits them (the common prefix of the prompt
and prompt + turn).

    perplexity = exp(Σ NLL / Σ tokens) over every scored token of every scored turn

Which turns: the first `max_user_turns` user turns of each held-out real session. A sample
longer than `max_tokens` loses its oldest history messages first, as `sft_samples` builds SFT
samples (counted: `n_messages_history_cut`); a message that does not fit even without history is
skipped and counted (`n_messages_skipped`). The end-of-conversation sample is not scored: it is
not something a real user wrote.

Efficiency: the prompt of a session's next message extends the prompt + completion of its previous
one, so a session is one sequence, run once, each message scored at its own positions (causal
attention: the same probabilities as one sequence per message; a message whose history was cut
starts a new sequence). Sequences are right-padded with an attention mask, sorted by length and
batched; the LM head and the log-softmax run only at the scored positions. This assumes a model
whose logits are its output embedding of the last hidden state (Llama, SmolLM2, Qwen, Mistral; not
models with logit soft-capping), as trl's CPU path in `training.common` does.

Interval: percentile bootstrap over sessions (`stats.resample_weights`), each resample's
exp(Σ NLL / Σ tokens). The draws depend on the seed and the number of sessions only, so every
simulator, scored on the same sessions, is resampled with the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dial.errors import DialError
from dial.evaluation import stats
from dial.evaluation.realism import select_sessions
from dial.prompting import DEFAULT_MESSAGE_SEPARATOR, join_user_turn, simulator_messages
from dial.sft_samples import turn_targets

MESSAGE_COLUMNS = ["session_id", "turn_index", "n_tokens", "nll", "history_cut"]


@dataclass(frozen=True)
class ScoredMessage:
    """One real user message as a teacher-forced sample: `token_ids` = prompt + message, the
    message's tokens from `n_prompt_tokens` on."""

    session_id: str
    turn_index: int
    token_ids: list[int]
    n_prompt_tokens: int
    history_cut: int  # oldest history messages dropped to fit max_tokens


@dataclass
class _Sequence:
    """Token ids run through the model once, and the messages scored in it: (first scored
    position, end, index into the messages)."""

    token_ids: list[int]
    spans: list[tuple[int, int, int]] = field(default_factory=list)


def _encode(tokenizer, conversations: list[list[dict[str, str]]], add_generation_prompt: bool) -> list[list[int]]:
    """Token ids of chat conversations, rendered as the simulator renders its prompts (ChatGenerator)."""
    if not conversations:
        return []
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=add_generation_prompt)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _sample_ids(
    tokenizer,
    context: str,
    history: list[tuple[str, str]],
    target: int,
    turn_text: str,
    drop: int,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> tuple[list[int], int]:
    """(prompt + turn ids, prompt length) of the user turn `turn_text` that starts at
    `history[target]`, the `drop` oldest history messages left out."""
    prompt = simulator_messages(context, history[drop:target], message_separator)
    completion = {"role": "assistant", "content": turn_text}
    (prompt_ids,) = _encode(tokenizer, [prompt], add_generation_prompt=True)
    (full_ids,) = _encode(tokenizer, [prompt + [completion]], add_generation_prompt=False)
    return list(full_ids), _common_prefix(prompt_ids, full_ids)


def user_message_samples(
    tokenizer,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    max_user_turns: int,
    max_tokens: int,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> tuple[list[ScoredMessage], int]:
    """The first `max_user_turns` user turns (0 = all) of each session as teacher-forced samples
    of at most `max_tokens`, in (session, turn) order, and the number skipped because they do not
    fit even without history. A turn's sample is keyed by its first message's turn_index."""
    context_of = dict(zip(contexts["session_id"].astype(str), contexts["context_text"]))
    session_ids = sorted(set(sessions["session_id"].astype(str)))
    missing = [sid for sid in session_ids if sid not in context_of]
    if missing:
        raise DialError(f"perplexity: no context for real session(s) {missing[:5]}")
    own = messages[messages["session_id"].astype(str).isin(session_ids)]
    own = own.assign(session_id=own["session_id"].astype(str)).sort_values(["session_id", "turn_index"], kind="stable")
    samples, skipped = [], 0
    for session_id, group in own.groupby("session_id", sort=True):
        context = context_of[session_id]
        history = list(zip(group["role"], group["text"]))
        turns = group["turn_index"].astype(int).tolist()
        # Each user turn: its first message's position and its messages joined (no end marker:
        # the end is not something the real user wrote).
        targets = [
            (start, join_user_turn(burst, False, separator=message_separator))
            for start, _, _, n_messages in turn_targets(history, "", message_separator)
            if n_messages
            for burst in [[text for _, text in history[start : start + n_messages]]]
        ]
        if max_user_turns > 0:
            targets = targets[:max_user_turns]
        for target, turn_text in targets:
            drop = 0
            token_ids, n_prompt = _sample_ids(tokenizer, context, history, target, turn_text, drop, message_separator)
            # The fewest oldest messages dropped so the sample fits (sft_samples' rule).
            while len(token_ids) > max_tokens and drop < target:
                drop += 1
                token_ids, n_prompt = _sample_ids(tokenizer, context, history, target, turn_text, drop, message_separator)
            if len(token_ids) > max_tokens:
                skipped += 1
                continue
            samples.append(ScoredMessage(session_id, turns[target], token_ids, n_prompt, drop))
    return samples, skipped


def _sequences(samples: Sequence[ScoredMessage]) -> list[_Sequence]:
    """The samples packed into sequences: a sample that extends the previous sample of its
    session (same tokens, then its own prompt rest and message) joins that sequence."""
    sequences: list[_Sequence] = []
    previous_session = None
    for index, sample in enumerate(samples):
        current = sequences[-1] if sequences and sample.session_id == previous_session else None
        extends = (
            current is not None
            and sample.n_prompt_tokens >= len(current.token_ids)
            and sample.token_ids[: len(current.token_ids)] == current.token_ids
        )
        if not extends:
            current = _Sequence(token_ids=[])
            sequences.append(current)
        current.token_ids = sample.token_ids
        current.spans.append((sample.n_prompt_tokens, len(sample.token_ids), index))
        previous_session = sample.session_id
    return sequences


def _model_precision(model) -> str:
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype))


@torch.inference_mode()
def message_nlls(model, tokenizer, samples: Sequence[ScoredMessage], batch_size: int = 8, progress: bool = False) -> pd.DataFrame:
    """Per sample: its number of scored tokens and their summed negative log-likelihood (nats),
    in MESSAGE_COLUMNS, in the samples' order."""
    sequences = _sequences(samples)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decoder, head = model.base_model, model.get_output_embeddings()
    nll = np.zeros(len(samples), dtype=np.float64)
    n_tokens = np.zeros(len(samples), dtype=np.int64)
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i].token_ids), i))  # similar lengths share a batch
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress, leave=False):
        width = max(len(sequences[i].token_ids) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, positions, targets, owners = [], [], [], []
        for row, i in enumerate(batch):
            ids = sequences[i].token_ids
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            for start, end, index in sequences[i].spans:
                # The token at position p is predicted by the hidden state at p - 1.
                rows += [row] * (end - start)
                positions += range(start - 1, end - 1)
                targets += ids[start:end]
                owners += [index] * (end - start)
        hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False).last_hidden_state
        scored = hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
        log_probs = torch.log_softmax(head(scored).float(), dim=-1)
        token_nll = -log_probs.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0]
        np.add.at(nll, owners, token_nll.double().cpu().numpy())
        np.add.at(n_tokens, owners, 1)
    return pd.DataFrame(
        {
            "session_id": [sample.session_id for sample in samples],
            "turn_index": [sample.turn_index for sample in samples],
            "n_tokens": n_tokens,
            "nll": nll,
            "history_cut": [sample.history_cut for sample in samples],
        },
        columns=MESSAGE_COLUMNS,
    )


def summarise(per_message: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    """Perplexity exp(Σ NLL / Σ tokens) with its percentile bootstrap interval over sessions."""
    per_session = per_message.groupby("session_id", sort=True)[["nll", "n_tokens"]].sum()
    total_nll, total_tokens = float(per_session["nll"].sum()), int(per_session["n_tokens"].sum())
    mean_nll = total_nll / total_tokens if total_tokens else None
    interval = None
    if total_tokens:
        weights = stats.resample_weights(len(per_session), n_resamples, stats.stable_rng(seed, "perplexity"))
        replicates = stats.ratio_replicates(weights, per_session["nll"].to_numpy(), per_session["n_tokens"].to_numpy())
        interval = stats.percentile_interval(np.exp(replicates))
    return {
        "value": math.exp(mean_nll) if mean_nll is not None else None,
        "value_ci_low": interval[0] if interval else None,
        "value_ci_high": interval[1] if interval else None,
        "mean_nll": mean_nll,
        "n_turns": int(len(per_message)),
        "n_sessions": int(len(per_session)),
        "n_tokens": total_tokens,
        "n_messages_history_cut": int((per_message["history_cut"] > 0).sum()),
    }


def held_out_perplexity(
    model,
    tokenizer,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    *,
    max_sessions: int,
    max_user_turns: int,
    max_tokens: int,
    batch_size: int,
    seed: int,
    n_resamples: int,
    bootstrap_seed: int,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
    progress: bool = True,
) -> dict:
    """The simulator's (`model`, `tokenizer`) perplexity of the real user messages of at most
    `max_sessions` real sessions (a seeded choice; 0 = all), with its interval and counts (module
    docstring). `max_tokens` is capped at the model's window."""
    window = getattr(model.config, "max_position_embeddings", None)
    if window:
        max_tokens = min(max_tokens, window)
    chosen = select_sessions(sessions["session_id"].astype(str).tolist(), max_sessions, seed)
    samples, skipped = user_message_samples(
        tokenizer, sessions[sessions["session_id"].astype(str).isin(chosen)], messages, contexts, max_user_turns, max_tokens,
        message_separator,
    )
    per_message = message_nlls(model, tokenizer, samples, batch_size, progress)
    return {
        **summarise(per_message, n_resamples, bootstrap_seed),
        "n_messages_skipped": skipped,
        "max_user_turns": max_user_turns,
        "precision": _model_precision(model),
    }
