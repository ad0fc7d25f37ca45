"""Preference pairs for DPO (METHOD.md §5 steps 3–5; DIAL paper §3.5, algorithm 1 lines 6–8).

For simulator S and the discriminator D_S trained on S's sessions:

1. **Critical points.** S's simulated sessions are scored by D_S (`score_sessions`, with the view
   and token budgets D_S was trained with, from its `dial_model.json`); the reward of each user
   message is r_t = logit(p_t) − logit(p_{t−1}) (`message_rewards`); per session the
   `n_per_session` messages with the highest and the lowest reward are the critical points
   (`critical_points`). Only sessions D_S did not train on get critical points
   (`exclude_discriminator_train`, default): at our sizes a discriminator memorises its training
   sessions, so their rewards say what it remembers, not what it learnt about real users. The
   report compares the mean |reward| of trained-on and held-out sessions (the memorisation that
   the exclusion avoids).

2. **Alternatives.** A user *turn* (one generation: one or more consecutive user messages, see
   `dial.prompting`) is one action, so a critical point is the whole turn its critical message
   belongs to: turn_index i is the turn's first message (a second critical message in the same
   turn adds no point; counted). The simulator prompt is `simulator_messages(context, history
   before i)` — the context of the real session that grounded s, then s's messages before i,
   flipped — exactly the prompt S answered when it wrote that turn. S samples `n_alternatives` new
   turns there with the simulation decoding;
   alternative j gets seed `stable_seed(seed, session_id, turn_index, j)`, so a candidate never
   depends on which other points exist. All alternatives of all points go to ONE
   `ChatGenerator.generate` call: rows are batched, and the rows of one point share a prompt,
   which the generator prefills once per batch (keep `generate_batch_size` a multiple of
   `n_alternatives` so a point's rows never straddle two batches).

   Text handling is the simulation's (`prompting.parse_user_turn`): an alternative's text is its
   turn as `join_user_turn` writes it — its messages joined by the separator, and the end marker
   as the last piece when it ends the conversation (ending is one more action, kept whole into the
   pair and DPO). An alternative with neither message nor marker is `empty`, not scored. One that
   stopped at `max_new_tokens` is trimmed to its last complete sentence, as the simulation keeps
   such a turn (`prompting.trim_cut_turn`); without one it is `truncated`, not scored: as a chosen
   completion DPO would teach the simulator to stop mid-sentence (or to write long turns), an
   artifact of our budget, not something real users do. Identical texts at
   one point are scored once: later copies are `duplicate` (same tokens, hence the same reward,
   which they carry) and never form a pair with their twin. Points whose prompt alone reaches the
   DPO `max_tokens` (or the simulator's position window) are not sampled at all: their candidates
   have status `prompt_over_max_tokens` / `prompt_over_simulator_window` and empty text.

3. **Scoring in the identical history.** Each alternative is encoded as the session cut before i
   plus its messages as consecutive user messages with D_S's `SessionEncoder` (same view, budget,
   markers), and reward = logit at the end of its last message − logit at the previous user
   message's end (p_0, the context end, for a first user turn).

   An alternative that ends the conversation is scored as the session would then be. Its messages
   (if any) are scored as any turn's: the discriminator reads causally and reads nothing after a
   user message, so it cannot see that the session ended there, in real sessions as in simulated
   ones. An end with no message is the session as it is, read at its last user message: logit =
   logit_prev, reward exactly 0. That is fair rather than favourable: the end adds no evidence either
   way, so it beats the alternatives that make the session look simulated (negative reward) and
   loses to those that make it look real. With the paper's sign filter (r_chosen > 0 > r_rejected)
   a bare end is never in a kept pair (0 is neither); without it (`require_opposite_signs: false`)
   it can be chosen or rejected. An end-aware discriminator would be needed to reward ending
   itself. Both logits come from the same forward pass. The
   tokens before the alternative are identical to those of the scored session, and causal
   attention makes the output at a position depend on the tokens up to it only. So logit_prev is
   the value `score_sessions` gave the session (it is the same computation; numerically equal up
   to float rounding of other batch shapes, ~1e-6), every alternative of a point gets the very
   same logit_prev (one prefix pass when `share_prefix`), and the reward is the reward the message
   would get were it substituted into the session, later turns included (tested to 1e-5). An
   alternative that does not fit D_S's token budget is `over_discriminator_budget`, not scored.

   With `share_prefix` (default) the shared history of a point's alternatives is run through D_S
   once and its keys/values reused for every alternative (the history is hundreds of tokens, an
   alternative a few dozen); without it every alternative is a full sequence in
   `forward_logits` batches. Same values up to float rounding (tested).

4. **Pair and filter.** Among the `scored` candidates of a point (distinct texts), chosen = the
   highest reward, rejected = the lowest among the others (ties: the lower candidate_index).
   Kept only if r_chosen > 0 and r_rejected < 0 (paper's filter; `require_opposite_signs:
   false` keeps any point with r_chosen > r_rejected, for a discriminator whose rewards all lean
   one way), and if the prompt plus the longer completion fit `max_tokens` (the DPO sample
   length; counted with the simulator's chat template). Each point has one outcome: `kept` or the
   first failing reason of too_few_scored_candidates (< 2 distinct scored texts),
   no_length_matched_rejected (with `max_length_ratio`: no other candidate within that factor of
   the chosen one's word count), chosen_reward_not_positive, rejected_reward_not_negative, rewards_tied (without the sign
   filter), over_max_tokens.

Outputs: `candidates.parquet` (`pair_candidates`: every candidate of every point, with its status,
logits, reward, seed and generated tokens), `pairs.parquet` (`preference_pairs`: one row per kept
point, `pair_id = "<session_id>:<turn_index>"`, the prompt as a JSON list of chat messages) and a
report of counts and reward statistics (no timings).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dial.discriminator import (
    SCORED as DISCRIMINATOR_SCORED,
    EncodedSession,
    SessionEncoder,
    _autocast,
    _model_device,
    _pad_id,
    forward_logits,
    grounding_session_ids,
    is_real,
    score_sessions,
)
from dial.errors import DialError
from dial.prompting import (
    DEFAULT_END_MARKER,
    DEFAULT_MESSAGE_SEPARATOR,
    is_end_of_conversation,
    join_user_turn,
    parse_user_turn,
    simulator_messages,
    trim_cut_turn,
)
from dial.rewards import critical_points, message_rewards
from dial.simulation.simulate import stable_seed
from dial.params import PairsParams, SimulatorParams  # noqa: F401 (PairsParams: defined with the other params)

log = logging.getLogger(__name__)

KINDS = ("highest", "lowest")

# Status of each candidate (pair_candidates.status).
SCORED = "scored"
DUPLICATE = "duplicate"
EMPTY = "empty"
TRUNCATED = "truncated"
OVER_DISCRIMINATOR_BUDGET = "over_discriminator_budget"
PROMPT_OVER_MAX_TOKENS = "prompt_over_max_tokens"
PROMPT_OVER_SIMULATOR_WINDOW = "prompt_over_simulator_window"
CANDIDATE_STATUSES = (
    SCORED, DUPLICATE, EMPTY, TRUNCATED, OVER_DISCRIMINATOR_BUDGET, PROMPT_OVER_MAX_TOKENS,
    PROMPT_OVER_SIMULATOR_WINDOW,
)
_NOT_SAMPLED = (PROMPT_OVER_MAX_TOKENS, PROMPT_OVER_SIMULATOR_WINDOW)

# Outcome of each critical point.
KEPT = "kept"
TOO_FEW_SCORED = "too_few_scored_candidates"
CHOSEN_NOT_POSITIVE = "chosen_reward_not_positive"
REJECTED_NOT_NEGATIVE = "rejected_reward_not_negative"
REWARDS_TIED = "rewards_tied"
OVER_MAX_TOKENS = "over_max_tokens"
NO_LENGTH_MATCH = "no_length_matched_rejected"
DROP_REASONS = (TOO_FEW_SCORED, NO_LENGTH_MATCH, CHOSEN_NOT_POSITIVE, REJECTED_NOT_NEGATIVE, REWARDS_TIED, OVER_MAX_TOKENS)

CANDIDATE_COLUMNS = [
    "session_id", "turn_index", "user_turn_number", "kind", "candidate_index", "text", "status", "logit",
    "logit_prev", "reward", "seed", "n_tokens",
]
PAIR_COLUMNS = [
    "pair_id", "session_id", "turn_index", "kind", "prompt", "chosen", "rejected", "chosen_reward",
    "rejected_reward", "prompt_tokens", "chosen_tokens", "rejected_tokens",
]
_CANDIDATE_DTYPES = [str, "int64", "int64", str, "int64", str, str, "float64", "float64", "float64", "int64", "int64"]
_PAIR_DTYPES = [str, str, "int64", str, str, str, str, "float64", "float64", "int64", "int64", "int64"]


# --------------------------------------------------------------------------------------------
# Critical points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPoint:
    """A user turn of a simulated session where alternatives are sampled."""

    session_id: str
    turn_index: int  # the turn's first message
    user_turn_number: int  # of that first message among the session's user messages (1 = first)
    kind: str  # "highest" | "lowest"
    reward: float  # the critical message's reward
    context_text: str
    history: tuple[tuple[str, str], ...]  # (role, text) of the session's messages before turn_index
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR  # joins a burst in the rendered history

    @property
    def pair_id(self) -> str:
        return f"{self.session_id}:{self.turn_index}"

    def prompt(self) -> list[dict[str, str]]:
        return simulator_messages(self.context_text, self.history, self.message_separator)


def build_points(
    critical: pd.DataFrame,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> list[CriticalPoint]:
    """`critical` (rows of `critical_points`) as CriticalPoints with their context and history,
    ordered by (session_id, turn_index): each point is the whole user turn of its critical message
    (one point per turn; the earlier critical message of a turn names it)."""
    if critical.empty:
        return []
    context_of = dict(zip(contexts["session_id"].astype(str), contexts["context_text"]))
    grounding = dict(zip(sessions["session_id"].astype(str), grounding_session_ids(sessions)))
    wanted = set(critical["session_id"])
    ordered = messages[messages["session_id"].isin(wanted)].sort_values(["session_id", "turn_index"], kind="stable")
    turns_of = {
        session_id: list(zip(group["role"], group["text"])) for session_id, group in ordered.groupby("session_id", sort=False)
    }
    points = []
    for row in critical.sort_values(["session_id", "turn_index"], kind="stable").itertuples(index=False):
        turns = turns_of[row.session_id]
        if turns[row.turn_index][0] != "user":
            raise DialError(f"session {row.session_id}: critical point at turn {row.turn_index} is not a user message")
        start = int(row.turn_index)
        while start > 0 and turns[start - 1][0] == "user":
            start -= 1  # back to the first message of the burst
        if points and (points[-1].session_id, points[-1].turn_index) == (str(row.session_id), start):
            continue  # the turn is already a point
        points.append(
            CriticalPoint(
                session_id=str(row.session_id),
                turn_index=start,
                user_turn_number=int(row.user_turn_number) - (int(row.turn_index) - start),
                kind=str(row.kind),
                reward=float(row.reward),
                context_text=context_of[grounding[row.session_id]],  # scored ⇒ the context exists
                history=tuple(turns[:start]),
                message_separator=message_separator,
            )
        )
    return points


# --------------------------------------------------------------------------------------------
# Alternatives: sampling
# --------------------------------------------------------------------------------------------


def candidate_text(
    generated: str, end_marker: str = DEFAULT_END_MARKER, separator: str = DEFAULT_MESSAGE_SEPARATOR,
    hit_max_tokens: bool = False,
) -> tuple[str, str | None]:
    """(text kept, status if it cannot be scored) of a sampled turn, read by the simulation's rules
    (`parse_user_turn`; cut at the token cap: `trim_cut_turn`) and kept whole: its messages joined
    by the separator, the end marker last when it ends the conversation (`join_user_turn`).
    Neither message nor marker: `empty`; cut with no complete sentence to end at: `truncated`."""
    user_turn = parse_user_turn(generated, end_marker, separator)
    if hit_max_tokens and not user_turn.ends:
        whole = trim_cut_turn(user_turn)
        if whole is None:
            return join_user_turn(user_turn.messages, False, end_marker, separator), TRUNCATED
        user_turn = whole
    if not user_turn.messages and not user_turn.ends:
        return "", EMPTY
    return join_user_turn(user_turn.messages, user_turn.ends, end_marker, separator), None


def sample_alternatives(
    generator,
    points: Sequence[CriticalPoint],
    params: PairsParams,
    end_marker: str = DEFAULT_END_MARKER,
    progress: bool = True,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> tuple[pd.DataFrame, list[int]]:
    """Sample `n_alternatives` turns at every point in one `generator.generate` call.

    Returns the candidates (scores still NaN; status `scored` means "to be scored") and each
    point's prompt token count with the simulator's chat template."""
    from dial.sft_samples import ChatRenderer

    renderer = ChatRenderer(generator.tokenizer)
    prompts = [point.prompt() for point in points]
    prompt_tokens = renderer.count(renderer.prompt_texts(prompts))
    window = getattr(generator, "max_positions", None)
    skipped: dict[int, str] = {}
    for index, n_prompt in enumerate(prompt_tokens):
        if n_prompt >= params.max_tokens:
            skipped[index] = PROMPT_OVER_MAX_TOKENS  # no completion can fit the DPO sample
        elif window and n_prompt + params.decoding.max_new_tokens > window:
            skipped[index] = PROMPT_OVER_SIMULATOR_WINDOW
    jobs = [(index, j) for index in range(len(points)) if index not in skipped for j in range(params.n_alternatives)]
    seeds = [stable_seed(params.seed, points[index].session_id, points[index].turn_index, j) for index, j in jobs]
    generated = generator.generate(
        [prompts[index] for index, _ in jobs], params.decoding, seeds, progress=progress, desc="alternatives"
    )
    by_job = dict(zip(jobs, zip(generated, seeds)))
    rows = []
    for index, point in enumerate(points):
        seen: set[str] = set()
        for j in range(params.n_alternatives):
            row = {
                "session_id": point.session_id, "turn_index": point.turn_index, "user_turn_number": point.user_turn_number,
                "kind": point.kind, "candidate_index": j, "logit": math.nan, "logit_prev": math.nan, "reward": math.nan,
            }
            if index in skipped:
                seed = stable_seed(params.seed, point.session_id, point.turn_index, j)
                rows.append({**row, "text": "", "status": skipped[index], "seed": seed, "n_tokens": 0})
                continue
            output, seed = by_job[(index, j)]
            text, status = candidate_text(output.text, end_marker, message_separator, output.hit_max_tokens)
            if status is None:
                status = DUPLICATE if text in seen else SCORED
                seen.add(text)
            rows.append({**row, "text": text, "status": status, "seed": seed, "n_tokens": output.n_tokens})
    return _candidates_frame(rows), prompt_tokens


def _candidates_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(CANDIDATE_COLUMNS, _CANDIDATE_DTYPES)})
    frame = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return frame.astype(dict(zip(CANDIDATE_COLUMNS, _CANDIDATE_DTYPES)))


# --------------------------------------------------------------------------------------------
# Alternatives: scoring
# --------------------------------------------------------------------------------------------


def _shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens all sequences start with, leaving each at least one token of its own."""
    shortest = min(len(ids) for ids in sequences)
    first = sequences[0]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length


def _prefix_shared_logits(
    model, tokenizer, group: Sequence[EncodedSession], batch_size: int, precision: str
) -> list[np.ndarray]:
    """`forward_logits` for sessions that share a long prefix: the prefix runs once (batch 1), its
    keys/values are reused by every suffix (right-padded batches). Causal attention: same values."""
    import torch
    from transformers import DynamicCache

    device = _model_device(model)
    sequences = [item.input_ids for item in group]
    prefix = _shared_prefix_length(sequences)
    if prefix == 0:
        return forward_logits(model, tokenizer, group, batch_size, precision)
    pad_id = _pad_id(tokenizer)
    results: list[np.ndarray] = []
    with torch.inference_mode(), _autocast(precision, device):
        cache = DynamicCache()
        head = model(
            input_ids=torch.tensor([sequences[0][:prefix]], dtype=torch.long, device=device),
            past_key_values=cache,
            use_cache=True,
        )
        prefix_logits = head.logits[0, :, 0].double().cpu().numpy()
        prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        for start in range(0, len(group), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(ids) for ids in chunk) - prefix
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), prefix + width), dtype=torch.long)
            attention[:, :prefix] = 1
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids) - prefix] = torch.tensor(ids[prefix:], dtype=torch.long)
                attention[row, prefix : len(ids)] = 1
            # A fresh cache per chunk: the forward appends the suffix keys/values to it.
            chunk_cache = DynamicCache(
                ddp_cache_data=[(k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1)) for k, v in prefix_kv]
            )
            positions = torch.arange(prefix, prefix + width, device=device)[None, :].expand(len(chunk), -1)
            output = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions,
                past_key_values=chunk_cache,
                use_cache=True,
            )
            suffix_logits = output.logits[..., 0].double().cpu().numpy()
            for row, item in enumerate(group[start : start + batch_size]):
                positions = item.read_positions()
                results.append(np.array([prefix_logits[p] if p < prefix else suffix_logits[row, p - prefix] for p in positions]))
    return results


def alternative_logits(
    model,
    tokenizer,
    groups: Sequence[Sequence[EncodedSession]],
    batch_size: int = 8,
    precision: str = "fp32",
    share_prefix: bool = True,
    progress: bool = False,
) -> list[list[np.ndarray]]:
    """Logits at `read_positions()` of every encoded session, per group (the alternatives of one
    point). `share_prefix`: the group's common tokens run once; otherwise every session is a full
    sequence in `forward_logits` batches across all groups."""
    if not share_prefix:
        flat = [item for group in groups for item in group]
        values = forward_logits(model, tokenizer, flat, batch_size, precision, progress)
        out, start = [], 0
        for group in groups:
            out.append(values[start : start + len(group)])
            start += len(group)
        return out
    was_training = model.training
    model.eval()
    try:
        return [
            _prefix_shared_logits(model, tokenizer, group, batch_size, precision) if group else []
            for group in tqdm(groups, desc="score alternatives", unit="point", disable=not progress)
        ]
    finally:
        model.train(was_training)


def score_alternatives(
    model,
    tokenizer,
    encoder: SessionEncoder,
    points: Sequence[CriticalPoint],
    candidates: pd.DataFrame,
    batch_size: int = 8,
    precision: str = "fp32",
    share_prefix: bool = True,
    progress: bool = False,
    end_marker: str = DEFAULT_END_MARKER,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> pd.DataFrame:
    """Fill logit, logit_prev and reward of the `scored` candidates (each turn's messages in its
    point's exact history; an end without a message is the history alone: reward 0, see the module
    docstring); those over the discriminator's budget get status `over_discriminator_budget`,
    duplicates the values of their first copy."""
    frame = candidates.reset_index(drop=True)  # positions == labels below
    rows_of = frame.groupby(["session_id", "turn_index"], sort=False).indices
    groups, group_rows = [], []
    points_of_rows: dict[int, CriticalPoint] = {}
    for point in points:
        rows = [r for r in rows_of.get((point.session_id, point.turn_index), []) if frame.at[r, "status"] == SCORED]
        encoded, kept = [], []
        before = point.user_turn_number - 1  # user messages before the turn
        for r in rows:
            user_turn = parse_user_turn(frame.at[r, "text"], end_marker, message_separator)
            new = [("user", message) for message in user_turn.messages]
            item = encoder.encode(point.context_text, [*point.history, *new], session_id=point.pair_id)
            fits = item.context_end is not None and item.n_scored == before + len(new)
            if fits and all(status == DISCRIMINATOR_SCORED for status in item.user_status[before : before + len(new)]):
                encoded.append(item)
                kept.append(r)
                points_of_rows[r] = point
            else:
                frame.at[r, "status"] = OVER_DISCRIMINATOR_BUDGET
        groups.append(encoded)
        group_rows.append(kept)
    logits = alternative_logits(model, tokenizer, groups, batch_size, precision, share_prefix, progress)
    for rows, values in zip(group_rows, logits):
        for r, v in zip(rows, values):
            # read positions: p_0, then every user message; the turn's messages are the last ones.
            before = points_of_rows[r].user_turn_number - 1
            frame.at[r, "logit"] = float(v[-1])
            frame.at[r, "logit_prev"] = float(v[before])
            frame.at[r, "reward"] = float(v[-1]) - float(v[before])
    # Duplicates: the same tokens as their first copy, hence its values.
    for (_, _), rows in rows_of.items():
        first: dict[str, int] = {}
        for r in sorted(rows, key=lambda r: frame.at[r, "candidate_index"]):
            status, text = frame.at[r, "status"], frame.at[r, "text"]
            if status in (SCORED, OVER_DISCRIMINATOR_BUDGET):
                first.setdefault(text, r)
            elif status == DUPLICATE and text in first:
                for column in ("logit", "logit_prev", "reward"):
                    frame.at[r, column] = frame.at[first[text], column]
    return frame


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairChoice:
    """The outcome of one critical point: `kept` or the reason it was dropped."""

    outcome: str
    chosen_index: int | None = None  # candidate_index
    rejected_index: int | None = None
    chosen_reward: float = math.nan
    rejected_reward: float = math.nan


def word_count(text: str) -> int:
    """Words of a candidate (`summarise.words`, the report's words per message), at least 1."""
    from dial.summarise import words

    return max(1, len(words(text)))


def select_pair(candidates: pd.DataFrame, require_opposite_signs: bool = True, max_length_ratio: float = 0.0) -> PairChoice:
    """Chosen / rejected among one point's candidates (columns candidate_index, text, status,
    reward): only `scored` rows with distinct texts count (a repeated text keeps its lowest
    candidate_index). chosen = highest reward, rejected = lowest among the rest; ties go to the
    lower candidate_index. With `max_length_ratio` r > 0 the rejected one is the lowest among the
    rest whose word count is within a factor r of the chosen one's (none: no_length_matched_rejected),
    so that a pair contrasts what is said rather than how much. Kept iff r_chosen > 0 and
    r_rejected < 0 (the paper's filter), or, with `require_opposite_signs=False`, iff r_chosen >
    r_rejected. The token budget is checked later (`build_pairs`)."""
    scored = candidates[(candidates["status"] == SCORED) & np.isfinite(candidates["reward"].astype("float64"))]
    scored = scored.sort_values("candidate_index", kind="stable").drop_duplicates("text", keep="first")
    if len(scored) < 2:
        return PairChoice(TOO_FEW_SCORED)
    scored = scored.reset_index(drop=True)
    chosen = scored.sort_values(["reward", "candidate_index"], ascending=[False, True], kind="stable").index[0]
    rest = scored.drop(index=chosen)
    if max_length_ratio > 0:
        chosen_words = word_count(scored.loc[chosen, "text"])
        rest_words = np.array([word_count(text) for text in rest["text"]], dtype=np.float64)
        rest = rest[(rest_words <= chosen_words * max_length_ratio) & (rest_words * max_length_ratio >= chosen_words)]
        if rest.empty:
            return PairChoice(NO_LENGTH_MATCH)
    rejected = rest.sort_values(["reward", "candidate_index"], ascending=[True, True], kind="stable").index[0]
    chosen_row, rejected_row = scored.loc[chosen], scored.loc[rejected]
    choice = dict(
        chosen_index=int(chosen_row["candidate_index"]),
        rejected_index=int(rejected_row["candidate_index"]),
        chosen_reward=float(chosen_row["reward"]),
        rejected_reward=float(rejected_row["reward"]),
    )
    if not require_opposite_signs:
        return PairChoice(KEPT if choice["chosen_reward"] > choice["rejected_reward"] else REWARDS_TIED, **choice)
    if not choice["chosen_reward"] > 0:
        return PairChoice(CHOSEN_NOT_POSITIVE, **choice)
    if not choice["rejected_reward"] < 0:
        return PairChoice(REJECTED_NOT_NEGATIVE, **choice)
    return PairChoice(KEPT, **choice)


def build_pairs(
    points: Sequence[CriticalPoint],
    candidates: pd.DataFrame,
    prompt_tokens: Sequence[int],
    tokenizer,
    max_tokens: int,
    require_opposite_signs: bool = True,
    max_length_ratio: float = 0.0,
) -> tuple[pd.DataFrame, list[str]]:
    """The kept preference pairs (PAIR_COLUMNS) and every point's outcome. Token counts use the
    simulator's chat template: the prompt with its generation prompt, each completion as the
    template renders it after the prompt (text + end of turn), as trl's DPO tokenises them."""
    from dial.sft_samples import ChatRenderer

    rows_of = candidates.groupby(["session_id", "turn_index"], sort=False).indices
    outcomes: list[str] = []
    kept: list[tuple[int, PairChoice, str, str]] = []
    for index, point in enumerate(points):
        group = candidates.iloc[rows_of.get((point.session_id, point.turn_index), [])]
        if group["status"].isin(_NOT_SAMPLED).any():
            outcomes.append(OVER_MAX_TOKENS)
            continue
        choice = select_pair(group, require_opposite_signs, max_length_ratio)
        outcomes.append(choice.outcome)
        if choice.outcome == KEPT:
            text_of = dict(zip(group["candidate_index"], group["text"]))
            kept.append((index, choice, text_of[choice.chosen_index], text_of[choice.rejected_index]))
    renderer = ChatRenderer(tokenizer)
    prompts = [points[index].prompt() for index, *_ in kept]
    prompt_texts = renderer.prompt_texts(prompts)
    chosen_counts = renderer.count(renderer.completion_texts(prompts, [c for *_, c, _ in kept], prompt_texts))
    rejected_counts = renderer.count(renderer.completion_texts(prompts, [r for *_, r in kept], prompt_texts))
    rows = []
    for (index, choice, chosen, rejected), prompt, n_chosen, n_rejected in zip(kept, prompts, chosen_counts, rejected_counts):
        point = points[index]
        if prompt_tokens[index] + max(n_chosen, n_rejected) > max_tokens:
            outcomes[index] = OVER_MAX_TOKENS
            continue
        rows.append(
            {
                "pair_id": point.pair_id,
                "session_id": point.session_id,
                "turn_index": point.turn_index,
                "kind": point.kind,
                "prompt": json.dumps(prompt, ensure_ascii=False),
                "chosen": chosen,
                "rejected": rejected,
                "chosen_reward": choice.chosen_reward,
                "rejected_reward": choice.rejected_reward,
                "prompt_tokens": int(prompt_tokens[index]),
                "chosen_tokens": int(n_chosen),
                "rejected_tokens": int(n_rejected),
            }
        )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(PAIR_COLUMNS, _PAIR_DTYPES)}), outcomes
    return pd.DataFrame(rows, columns=PAIR_COLUMNS).astype(dict(zip(PAIR_COLUMNS, _PAIR_DTYPES))), outcomes


# --------------------------------------------------------------------------------------------
# The whole step
# --------------------------------------------------------------------------------------------


def _mean_abs(values) -> float | None:
    finite = np.asarray(values, dtype="float64")
    finite = finite[np.isfinite(finite)]
    return round(float(np.abs(finite).mean()), 6) if finite.size else None


def _stats(values) -> dict:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 6),
        "std": round(float(values.std()), 6),
        "min": round(float(values.min()), 6),
        "max": round(float(values.max()), 6),
    }


def pairs_report(
    sessions: pd.DataFrame,
    scores: pd.DataFrame,
    points: Sequence[CriticalPoint],
    candidates: pd.DataFrame,
    pairs: pd.DataFrame,
    outcomes: Sequence[str],
    manifest: dict,
    params: PairsParams,
) -> dict:
    """Counts and reward statistics (no timings: the report must be reproducible)."""
    kinds = [point.kind for point in points]
    n_points = len(points)
    n_kept = int(len(pairs))
    statuses = candidates["status"].value_counts()
    scored = candidates[candidates["status"] == SCORED]
    return {
        "simulated_sessions": int(len(sessions)),
        "discriminator": {k: manifest.get(k) for k in ("view", "max_tokens", "max_user_turns")},
        "user_messages": int(len(scores)),
        "user_messages_by_status": {str(s): int(n) for s, n in sorted(scores["status"].value_counts().items())},
        "scored_user_messages": int(scores["logit"].notna().sum()),
        "sessions_with_critical_points": len({point.session_id for point in points}),
        "critical_points": {"total": n_points, **{kind: kinds.count(kind) for kind in KINDS}},
        "n_alternatives": params.n_alternatives,
        "candidates": int(len(candidates)),
        "candidates_by_status": {status: int(statuses.get(status, 0)) for status in CANDIDATE_STATUSES},
        "scored_candidates": int(len(scored)),
        "points_with_kept_pair": int(list(outcomes).count(KEPT)),
        "kept_pairs": n_kept,
        "kept_pairs_by_kind": {kind: int((pairs["kind"] == kind).sum()) for kind in KINDS},
        "kept_share": round(n_kept / n_points, 6) if n_points else 0.0,
        "dropped": {reason: int(list(outcomes).count(reason)) for reason in DROP_REASONS},
        "rewards": {
            "critical_points": {kind: _stats([p.reward for p in points if p.kind == kind]) for kind in KINDS},
            "scored_candidates": _stats(scored["reward"]),
            "kept_chosen": _stats(pairs["chosen_reward"]),
            "kept_rejected": _stats(pairs["rejected_reward"]),
            "kept_margin": _stats(pairs["chosen_reward"] - pairs["rejected_reward"]),
        },
        "kept_tokens": {
            "prompt": _stats(pairs["prompt_tokens"].astype("float64")),
            "longest_pair": _stats(
                (pairs["prompt_tokens"] + pairs[["chosen_tokens", "rejected_tokens"]].max(axis=1)).astype("float64")
            ),
        },
    }


@dataclass
class PairsResult:
    candidates: pd.DataFrame  # CANDIDATE_COLUMNS
    pairs: pd.DataFrame  # PAIR_COLUMNS
    report: dict
    scores: pd.DataFrame  # the discriminator's scores of the simulated sessions
    points: list[CriticalPoint]


def make_pairs(
    params: PairsParams,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    discriminator: tuple,
    load_simulator: Callable[[], object],
    end_marker: str = DEFAULT_END_MARKER,
    progress: bool = True,
    discriminator_train_sessions: Collection[str] = (),
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> PairsResult:
    """The whole step in memory. `discriminator` = (model, tokenizer, manifest) as
    `load_discriminator` returns; `load_simulator()` returns the simulator's `ChatGenerator` and
    is only called when there is a critical point. `discriminator_train_sessions`: the simulated
    sessions D_S trained on (no critical point there with `params.exclude_discriminator_train`)."""
    from dial.training.common import resolve_precision

    if is_real(sessions).any():
        bad = sessions.loc[is_real(sessions), "session_id"].head(3).tolist()
        raise DialError(f"pairs: the simulated sessions include real ones (source not 'simulated:...'), e.g. {bad}")
    model, tokenizer, manifest = discriminator
    view, budget, max_user_turns = manifest["view"], int(manifest["max_tokens"]), int(manifest.get("max_user_turns", 0))
    precision = resolve_precision(params.precision, _model_device(model))
    started = time.perf_counter()
    scores = score_sessions(
        model, tokenizer, sessions, messages, contexts, view, budget, max_user_turns, params.score_batch_size, precision,
        progress,
    )
    rewards = message_rewards(scores)
    trained_on = rewards["session_id"].isin(set(discriminator_train_sessions))
    critical = critical_points(rewards[~trained_on] if params.exclude_discriminator_train else rewards, params.n_per_session)
    n_sessions_with_points = int(critical["session_id"].nunique())
    if params.max_sessions and n_sessions_with_points > params.max_sessions:
        # A seeded, order-independent subset of sessions (CPU budget): alternatives cost
        # n_alternatives generations and discriminator passes per critical point.
        ranked = sorted(critical["session_id"].unique(), key=lambda session_id: stable_seed(params.seed, "pairs-sessions", session_id))
        critical = critical[critical["session_id"].isin(set(ranked[: params.max_sessions]))]
    points = build_points(critical, sessions, messages, contexts, message_separator)
    seconds = time.perf_counter() - started
    log.info("pairs: %d sessions scored, %d critical points (%.1f s)", len(sessions), len(points), seconds)

    if points:
        simulator = load_simulator()
        started = time.perf_counter()
        try:
            candidates, prompt_tokens = sample_alternatives(simulator, points, params, end_marker, progress, message_separator)
        finally:
            if hasattr(simulator, "close"):
                simulator.close()
        log.info("pairs: %d alternatives sampled in %.1f s", len(candidates), time.perf_counter() - started)
        started = time.perf_counter()
        encoder = SessionEncoder(tokenizer, view, budget, max_user_turns)
        candidates = score_alternatives(
            model, tokenizer, encoder, points, candidates, params.score_batch_size, precision, params.share_prefix, progress,
            end_marker, message_separator,
        )
        log.info("pairs: alternatives scored in %.1f s", time.perf_counter() - started)
        _log_prefix_agreement(rewards, candidates)
        pairs, outcomes = build_pairs(
            points, candidates, prompt_tokens, simulator.tokenizer, params.max_tokens, params.require_opposite_signs,
            params.max_length_ratio,
        )
    else:
        candidates, prompt_tokens = _candidates_frame([]), []
        pairs, outcomes = build_pairs([], candidates, [], None, params.max_tokens)
    report = pairs_report(sessions, scores, points, candidates, pairs, outcomes, manifest, params)
    report["critical_messages_in_a_turn_already_a_point"] = int(len(critical)) - len(points)
    # Ending is one more action: how often it was sampled, and kept in a pair.
    def ending(texts) -> list[bool]:
        return [is_end_of_conversation(text, end_marker) for text in texts]

    report["ending_alternatives"] = {
        "sampled": sum(ending(candidates["text"])),
        "scored": sum(ending(candidates.loc[candidates["status"] == SCORED, "text"])),
        "kept_as_chosen": sum(ending(pairs["chosen"])),
        "kept_as_rejected": sum(ending(pairs["rejected"])),
    }
    report["sessions_with_critical_points"] = n_sessions_with_points
    report["sessions_sampled_for_alternatives"] = len({point.session_id for point in points})
    report["require_opposite_signs"] = params.require_opposite_signs
    report["discriminator_train_sessions"] = {
        "sessions": int(rewards.loc[trained_on, "session_id"].nunique()),
        "excluded": params.exclude_discriminator_train,
        # Memorisation shows as larger rewards on the sessions D_S trained on than on the others.
        "mean_abs_reward_trained_on": _mean_abs(rewards.loc[trained_on, "reward"]),
        "mean_abs_reward_held_out": _mean_abs(rewards.loc[~trained_on, "reward"]),
    }
    report["precision"] = precision  # what `auto` resolved to: bf16 and fp32 machines sample different pairs
    return PairsResult(candidates, pairs, report, scores, points)


def _log_prefix_agreement(rewards: pd.DataFrame, candidates: pd.DataFrame) -> None:
    """logit_prev of an alternative is read where the session's own logit_prev was: the largest
    difference (float rounding of other batch shapes only) is logged as a sanity check."""
    scored = candidates[candidates["status"] == SCORED]
    if scored.empty:
        return
    session = rewards[["session_id", "turn_index", "logit_prev"]]
    merged = scored.merge(session, on=["session_id", "turn_index"], suffixes=("", "_session"))
    gap = float((merged["logit_prev"] - merged["logit_prev_session"]).abs().max())
    log.info("pairs: max |logit_prev(alternative) - logit_prev(session)| = %.2e", gap)


def run_pairs(
    params: PairsParams,
    end_marker: str,
    simulated_dir: Path,
    contexts_file: Path,
    discriminator_dir: Path,
    base_model_dir: Path,
    simulator_adapter_dir: Path | None,
    out_dir: Path,
    report_file: Path,
    progress: bool = True,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
    simulator_id: str | None = None,
    simulator_settings: SimulatorParams | None = None,
) -> dict:
    """The `pairs` stage: read simulator S's sessions (`simulated_dir`), the contexts and D_S
    (`discriminator_dir`, on `base_model_dir`); sample with S (base model + `simulator_adapter_dir`,
    None = zero-shot; on the backend of `simulator_settings`, default local; `simulator_id` names
    it, by default the adapter folder's name); write `out_dir/candidates.parquet`,
    `out_dir/pairs.parquet` and the report. Returns the report."""
    simulator = simulator_id or (Path(simulator_adapter_dir).name if simulator_adapter_dir is not None else "zero-shot")
    from dial import io, paths
    from dial.discriminator import SELECTION_FILE, load_discriminator
    from dial.simulation.backends import load_simulator

    simulated_dir, out_dir = Path(simulated_dir), Path(out_dir)
    sessions = io.SESSIONS.read(paths.sessions_file(simulated_dir))
    messages = io.MESSAGES.read(paths.messages_file(simulated_dir))
    contexts = io.CONTEXTS.read(contexts_file)
    discriminator = load_discriminator(discriminator_dir, base_model_dir)
    selection_file = Path(discriminator_dir) / SELECTION_FILE
    if not selection_file.is_file():
        raise DialError(f"{selection_file}: missing (the discriminator stage writes it); re-run the discriminator stage")
    trained_on = json.loads(selection_file.read_text(encoding="utf-8"))["train"]["simulated"]

    def simulator_generator():
        return load_simulator(simulator, simulator_settings or SimulatorParams(), base_model_dir, simulator_adapter_dir,
                              params.precision, params.generate_batch_size)

    result = make_pairs(
        params, sessions, messages, contexts, discriminator, simulator_generator, end_marker, progress, trained_on, message_separator
    )
    io.PAIR_CANDIDATES.write(result.candidates, out_dir / "candidates.parquet")
    io.PREFERENCE_PAIRS.write(result.pairs, out_dir / "pairs.parquet")
    io.write_json_atomic(report_file, result.report)
    log.info(
        "pairs: %d of %d critical points kept (%s)", result.report["kept_pairs"], result.report["critical_points"]["total"],
        ", ".join(f"{reason} {n}" for reason, n in result.report["dropped"].items()),
    )
    return result.report
