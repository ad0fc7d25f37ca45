"""One pandera schema per artifact. Enforced by `dial.io.Artifact` on every write and read.

The canonical data model (see README "Data model"):

* `sessions`  one row per conversation (real or simulated), ordered per user by `session_index`;
* `messages`  one row per message, `turn_index` contiguous from 0 within a session, roles
              `user` (the person we simulate) and `assistant` (the chatbot / supporter);
* `users`     one row per user with a JSON profile from what the source offers.

Free-form, source-specific fields live in JSON-object `metadata` / `profile` strings so the
columns stay the same for every source (chitchat ratings, ESConv strategies and survey scores, ...).
Later stages reuse `sessions`/`messages` for simulated sessions.
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
    `user` turns. `completion` is the next real user message, or the end marker for the extra
    end-of-conversation sample of each session. Loss is on the completion only.
    """

    sample_id: Series[str] = pa.Field(unique=True)
    session_id: Series[str]
    user_id: Series[str]
    split: Series[str] = pa.Field(isin=list(SPLITS))
    target_turn_index: Series[int] = pa.Field(ge=0)  # for end samples: number of messages
    is_end: Series[bool]
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
