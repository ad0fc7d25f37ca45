"""One pandera schema per artifact. Enforced by `dial.io.Artifact` on every write and read.

The canonical data model (see README "Data model"):

* `sessions`  one row per conversation (real or simulated), ordered per user by `session_index`;
* `messages`  one row per message, `turn_index` contiguous from 0 within a session, roles
              `user` (the person we simulate) and `assistant` (the chatbot / supporter);
* `users`     one row per user with a JSON profile from what the source offers.

Free-form, source-specific fields live in JSON-object `metadata` / `profile` strings so the
columns stay the same for every source (chitchat ratings, ESConv strategies and survey scores, ...).
Later stages reuse `sessions`/`messages` for simulated sessions.

One metadata key is shared by every source: `truncated` (a JSON boolean) on a message that the
token budget cut before its writer ended it (simulated messages; `dial.simulation.simulate` sets it on every
one). Real messages are never cut and carry no mark, nor do files written before it existed:
`is_truncated` reads a missing mark as not cut.
"""

from __future__ import annotations

import json

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

ROLES = ("user", "assistant")
SPLITS = ("train", "valid", "test")
ISO_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (TypeError, ValueError):
        return False


def _is_json_list(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except (TypeError, ValueError):
        return False


def _non_blank(series: pd.Series) -> pd.Series:
    return series.str.strip().str.len() > 0


TRUNCATED_KEY = "truncated"


def is_truncated(metadata: str) -> bool:
    """Whether a message's JSON metadata marks it cut by the token budget (no mark: not cut)."""
    return json.loads(metadata).get(TRUNCATED_KEY, False) is True


def _truncated_mark_is_boolean(text: str) -> bool:
    try:
        return isinstance(json.loads(text).get(TRUNCATED_KEY, False), bool)
    except (TypeError, ValueError, AttributeError):
        return False


class _Strict(pa.DataFrameModel):
    class Config:
        strict = True  # no unexpected columns
        coerce = True


class SessionsSchema(_Strict):
    session_id: Series[str] = pa.Field(unique=True)
    user_id: Series[str]
    source: Series[str]
    session_index: Series[int] = pa.Field(ge=0)
    started_at: Series[str] = pa.Field(nullable=True, str_matches=ISO_UTC)
    chatbot_id: Series[str] = pa.Field(nullable=True)
    # Grounding text the source offers for this session (chitchat prompt, ESConv situation).
    topic: Series[str] = pa.Field(nullable=True)
    metadata: Series[str]

    @pa.check("session_id", "user_id", "source")
    def _ids_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)

    @pa.check("metadata")
    def _metadata_is_json_object(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_object)

    @pa.dataframe_check
    def _session_index_unique_per_user(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["user_id", "session_index"], keep=False)


class MessagesSchema(_Strict):
    session_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)
    role: Series[str] = pa.Field(isin=list(ROLES))
    text: Series[str]
    timestamp: Series[str] = pa.Field(nullable=True, str_matches=ISO_UTC)
    metadata: Series[str]

    @pa.check("text")
    def _text_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)

    @pa.check("metadata")
    def _metadata_is_json_object(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_object)

    @pa.check("metadata")
    def _truncated_is_boolean(cls, series: pd.Series) -> pd.Series:
        return series.map(_truncated_mark_is_boolean)

    @pa.dataframe_check
    def _turns_contiguous(cls, df: pd.DataFrame) -> pd.Series:
        # turn_index must be exactly 0..n-1 within each session (no gaps, no duplicates).
        turns = df.groupby("session_id")["turn_index"]
        count, lowest = turns.transform("count"), turns.transform("min")
        highest, distinct = turns.transform("max"), turns.transform("nunique")
        return (lowest == 0) & (highest == count - 1) & (distinct == count)


class UsersSchema(_Strict):
    user_id: Series[str] = pa.Field(unique=True)
    source: Series[str]
    n_sessions: Series[int] = pa.Field(ge=1)
    profile: Series[str]

    @pa.check("profile")
    def _profile_is_json_object(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_object)


class QuarantineSchema(_Strict):
    """Rejected input rows with the reason, so nothing is silently lost."""

    source_file: Series[str]
    line: Series[int] = pa.Field(ge=0)  # 1-based input line (or record number); 0 = whole file
    field: Series[str]
    reason: Series[str]
    raw: Series[str]  # the rejected row as read (decoded with replacement if not valid UTF-8)


class PiiFindingsSchema(_Strict):
    """Where PII was replaced (never the original text)."""

    session_id: Series[str]
    location: Series[str]  # "message:<turn_index>", "topic", "metadata:<key>", "profile:<key>"
    entity_type: Series[str]
    placeholder: Series[str] = pa.Field(str_matches=r"^<[A-Z_]+_\d+>$")
    start: Series[int] = pa.Field(ge=0)
    end: Series[int] = pa.Field(ge=0)
    score: Series[float] = pa.Field(ge=0.0, le=1.0)


class ContextsSchema(_Strict):
    """The hierarchical user context of each session (METHOD.md §2), already within budget."""

    session_id: Series[str] = pa.Field(unique=True)
    user_id: Series[str]
    instruction: Series[str]
    profile: Series[str]
    long_term: Series[str]
    previous_summaries: Series[str]  # JSON list, oldest first, after truncation
    current_summary: Series[str]
    recent_history: Series[str]  # JSON list of {"role", "text"}, oldest first, after truncation
    context_text: Series[str]  # the rendered context the simulator sees
    n_tokens: Series[int] = pa.Field(ge=1)
    n_previous_summaries_dropped: Series[int] = pa.Field(ge=0)
    n_history_messages_dropped: Series[int] = pa.Field(ge=0)
    long_term_dropped: Series[bool]

    @pa.check("previous_summaries", "recent_history")
    def _json_lists(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_list)

    @pa.check("instruction", "current_summary", "context_text")
    def _never_empty(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)


class SplitsSchema(_Strict):
    user_id: Series[str] = pa.Field(unique=True)
    split: Series[str] = pa.Field(isin=list(SPLITS))


class SftSamplesSchema(_Strict):
    """Flipped-dialogue training samples (METHOD.md §3), trl prompt-completion format.

    `prompt` is a JSON list of chat messages from the *simulator's* point of view: the context as
    the system message, the real user's earlier messages as `assistant` turns and the chatbot's as
    `user` turns. `completion` is the next real user turn: its messages (a burst) joined by the
    message separator, with the end marker as a last piece when the session ends with that turn;
    or the end marker alone after a session's last chatbot message (`dial.prompting`). Every
    session has exactly one `is_end` sample. Loss is on the completion only.
    """

    sample_id: Series[str] = pa.Field(unique=True)
    session_id: Series[str]
    user_id: Series[str]
    split: Series[str] = pa.Field(isin=list(SPLITS))
    target_turn_index: Series[int] = pa.Field(ge=0)  # first message of the turn; marker alone: number of messages
    is_end: Series[bool]
    n_target_messages: Series[int] = pa.Field(ge=0)  # user messages in the completion (0: the marker alone)
    prompt: Series[str]
    completion: Series[str]
    n_prompt_tokens: Series[int] = pa.Field(ge=1)
    n_completion_tokens: Series[int] = pa.Field(ge=1)
    n_history_messages_dropped: Series[int] = pa.Field(ge=0)

    @pa.check("prompt")
    def _prompt_is_json_list(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_list)

    @pa.check("completion")
    def _completion_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)


STOP_REASONS = ("user_ended", "chatbot_ended", "max_turns", "empty_message")


class SimulationsSchema(_Strict):
    """Generation metadata of simulated sessions, one row per session. The sessions and messages
    themselves are in the canonical `sessions`/`messages` schemas, like real ones."""

    session_id: Series[str] = pa.Field(unique=True)
    simulator_id: Series[str]
    chatbot_id: Series[str]
    real_session_id: Series[str]  # whose context grounded the simulation
    real_user_id: Series[str]
    simulation_index: Series[int] = pa.Field(ge=0)  # m of the M simulations per context and chatbot
    seed: Series[int] = pa.Field(ge=0)
    stop_reason: Series[str] = pa.Field(isin=list(STOP_REASONS))
    n_user_messages: Series[int] = pa.Field(ge=0)
    n_assistant_messages: Series[int] = pa.Field(ge=0)
    user_tokens_generated: Series[int] = pa.Field(ge=0)
    guardrail_retries: Series[int] = pa.Field(ge=0)
    guardrail_flagged: Series[int] = pa.Field(ge=0)  # messages kept although a guardrail failed


TERMINATION_STATUSES = ("generated", "over_max_positions")


class TerminationPredictionsSchema(_Strict):
    """Dialogue-termination probe of one simulator (dial.evaluation.realism): at every position
    after a chatbot turn of held-out real sessions, did the simulator emit the end marker, and did
    the real user end there."""

    simulator_id: Series[str]
    session_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)  # the chatbot message after which the user speaks
    is_end: Series[bool]  # the real user's next turn ends the session (no chatbot message after it)
    predicted_end: Series[bool]  # the simulator's output started with the end marker
    status: Series[str] = pa.Field(isin=list(TERMINATION_STATUSES))
    generated: Series[str]  # the simulator's (short) output, "" when not generated

    @pa.dataframe_check
    def _one_row_per_position(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["simulator_id", "session_id", "turn_index"], keep=False)


CANDIDATE_STATUSES = (
    "scored", "duplicate", "empty", "truncated", "over_discriminator_budget", "prompt_over_max_tokens",
    "prompt_over_simulator_window",
)
CRITICAL_KINDS = ("highest", "lowest")


class PairCandidatesSchema(_Strict):
    """Every alternative user turn sampled at a critical point (dial.pairs): its status and, when
    scored by the discriminator in the session's exact history, its logits and reward. Unscored
    candidates have NaN logits; `duplicate` ones carry the values of their first copy."""

    session_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)  # the critical user message's turn in the simulated session
    user_turn_number: Series[int] = pa.Field(ge=1)
    kind: Series[str] = pa.Field(isin=list(CRITICAL_KINDS))
    candidate_index: Series[int] = pa.Field(ge=0)
    text: Series[str]  # "" when empty or not sampled
    status: Series[str] = pa.Field(isin=list(CANDIDATE_STATUSES))
    logit: Series[float] = pa.Field(nullable=True)  # at the alternative's end
    logit_prev: Series[float] = pa.Field(nullable=True)  # at the previous user message's end (or context end)
    reward: Series[float] = pa.Field(nullable=True)  # logit − logit_prev
    seed: Series[int] = pa.Field(ge=0)
    n_tokens: Series[int] = pa.Field(ge=0)  # tokens generated (end of turn included); 0 when not sampled

    @pa.dataframe_check
    def _one_row_per_candidate(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["session_id", "turn_index", "candidate_index"], keep=False)

    @pa.dataframe_check
    def _scored_have_rewards(cls, df: pd.DataFrame) -> pd.Series:
        return (df["status"] != "scored") | (df["logit"].notna() & df["logit_prev"].notna() & df["reward"].notna())


class PreferencePairsSchema(_Strict):
    """DPO preference pairs (dial.pairs), one per kept critical point, after the reward filter
    (chosen reward > rejected reward always; > 0 > with `pairs.require_opposite_signs`, the
    paper's filter) and the token cap. `prompt` is a JSON list of chat
    messages {"role", "content"} as `simulator_messages` returns them (system context + flipped
    history); token counts use the simulator's chat template (prompt with generation prompt)."""

    pair_id: Series[str] = pa.Field(unique=True)  # "<session_id>:<turn_index>"
    session_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)
    kind: Series[str] = pa.Field(isin=list(CRITICAL_KINDS))
    prompt: Series[str]
    chosen: Series[str]
    rejected: Series[str]
    chosen_reward: Series[float]
    rejected_reward: Series[float]
    prompt_tokens: Series[int] = pa.Field(ge=1)
    chosen_tokens: Series[int] = pa.Field(ge=1)
    rejected_tokens: Series[int] = pa.Field(ge=1)

    @pa.check("prompt")
    def _prompt_is_json_list(cls, series: pd.Series) -> pd.Series:
        return series.map(_is_json_list)

    @pa.check("chosen", "rejected")
    def _completions_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)

    @pa.dataframe_check
    def _chosen_differs_from_rejected(cls, df: pd.DataFrame) -> pd.Series:
        return df["chosen"] != df["rejected"]

    @pa.dataframe_check
    def _chosen_beats_rejected(cls, df: pd.DataFrame) -> pd.Series:
        return df["chosen_reward"] > df["rejected_reward"]

    @pa.dataframe_check
    def _pair_id_names_the_point(cls, df: pd.DataFrame) -> pd.Series:
        return df["pair_id"] == df["session_id"] + ":" + df["turn_index"].astype(str)


class GoalStatesSchema(_Strict):
    """User goal-state tracking (dial.evaluation.goals, UGST): every goal sub-component's status at
    user turn 0 (the initial state) and after each user turn of each evaluated session."""

    group: Series[str]  # real, zero-shot, sft, it1, ...
    session_id: Series[str]
    component_index: Series[int] = pa.Field(ge=0)
    category: Series[str] = pa.Field(isin=["task_objective", "user_profile", "emotional_state", "preference", "user_policy"])
    description: Series[str]
    user_turn: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(isin=["incomplete", "attempted", "complete", "aligned", "misaligned"])
    success: Series[bool]
    tracker: Series[str]  # "rules" or "openai:<model>"


class IssuesSchema(_Strict):
    """Judge annotations (dial.evaluation.judges): one row per issue, on the CHATBOT message it is
    about. `item_id` is the opaque id the judge saw (a salted hash of the session id)."""

    item_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)  # of the chatbot message
    group: Series[str]  # taxonomy issue group (User Distress, ..., App Bugs)
    category: Series[str]
    evidence: Series[str]  # quote or reason ("" if an LLM judge gave none)
    judge: Series[str]  # "rules" or "openai:<model>"

    @pa.check("item_id", "group", "category", "judge")
    def _names_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)


class UserActionsSchema(_Strict):
    """Judge annotations: one row per (USER message, action) label; a message can have several."""

    item_id: Series[str]
    turn_index: Series[int] = pa.Field(ge=0)  # of the user message
    group: Series[str]  # taxonomy action group (Good, Bad, User features, ...)
    action: Series[str]
    judge: Series[str]

    @pa.check("item_id", "group", "action", "judge")
    def _names_not_blank(cls, series: pd.Series) -> pd.Series:
        return _non_blank(series)

    @pa.dataframe_check
    def _one_row_per_label(cls, df: pd.DataFrame) -> pd.Series:
        return ~df.duplicated(["item_id", "turn_index", "action", "judge"], keep=False)
