"""Hierarchical user contexts (METHOD.md §2, DIAL appendix A), truncated to a token budget.

Components, in priority order (highest first):
  1. instruction            the simulator's role (params)            never dropped
  2. profile                source profile + stats of earlier sessions never dropped
  3. long-term context      topics recurring across earlier sessions
  4. previous summaries     the n most recent earlier sessions
  5. current-session summary topic + non-verbatim summary            never dropped
  6. recent raw history     messages of the most recent earlier session

Truncation drops the lowest-priority, most distant material first: raw history messages (oldest
first), then previous-session summaries (oldest first), then the long-term context. Only what a
user has said *before* the target session feeds its profile, long-term context and history; the
target session itself only reaches the context through its (non-verbatim) summary and topic.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from dial.errors import BudgetError
from dial.params import ContextParams
from dial.summarise import SessionText, Summariser, content_words, words

TokenCounter = Callable[[Sequence[str]], list[int]]

TOPIC_LABELS = {
    "chitchat": "Conversation prompt (shown to both speakers)",
    "esconv": "The user's situation, in their own words before the chat",
}
ROLE_LABELS = {"user": "USER", "assistant": "ASSISTANT"}


@dataclass(frozen=True)
class ContextParts:
    instruction: str
    profile: str
    long_term: str
    previous_summaries: tuple[str, ...]  # oldest first
    current_summary: str
    recent_history: tuple[tuple[str, str], ...]  # (role, text), oldest first


def render_context(parts: ContextParts) -> str:
    """The context text the simulator sees (chronological order, this session last)."""
    sections = [f"## Your role\n{parts.instruction}", f"## User profile\n{parts.profile}"]
    if parts.long_term:
        sections.append(f"## Long-term context\n{parts.long_term}")
    if parts.previous_summaries:
        lines = "\n".join(f"- {summary}" for summary in parts.previous_summaries)
        sections.append(f"## Previous sessions (oldest first)\n{lines}")
    if parts.recent_history:
        lines = "\n".join(f"{ROLE_LABELS[role]}: {text}" for role, text in parts.recent_history)
        sections.append(f"## Most recent previous session (verbatim)\n{lines}")
    sections.append(f"## This session\n{parts.current_summary}")
    return "\n\n".join(sections)


@dataclass(frozen=True)
class FittedContext:
    parts: ContextParts
    text: str
    n_tokens: int
    n_previous_summaries_dropped: int
    n_history_messages_dropped: int
    long_term_dropped: bool


def fit_context(parts: ContextParts, count_tokens: TokenCounter, max_tokens: int) -> FittedContext:
    """Drop the lowest-priority, most distant material until the rendered context fits."""
    text = render_context(parts)
    (n_tokens,) = count_tokens([text])
    n_summaries, n_history = len(parts.previous_summaries), len(parts.recent_history)
    if n_tokens > max_tokens:
        # Estimate with per-item counts, then confirm on the real rendering (token merges at
        # boundaries make the sum approximate) and keep dropping one item at a time if needed.
        history_lines = [f"{ROLE_LABELS[role]}: {text}" for role, text in parts.recent_history]
        item_costs = count_tokens(history_lines + [f"- {s}" for s in parts.previous_summaries] + [parts.long_term])
        history_costs, summary_costs = item_costs[:n_history], item_costs[n_history:-1]
        excess = n_tokens - max_tokens
        queue = [("history", c) for c in history_costs] + [("summary", c) for c in summary_costs]
        queue.append(("long_term", item_costs[-1]))
        dropped_history = dropped_summaries = 0
        long_term_dropped = False
        for kind, cost in queue:
            if excess <= 0:
                break
            excess -= cost
            if kind == "history":
                dropped_history += 1
            elif kind == "summary":
                dropped_summaries += 1
            else:
                long_term_dropped = True
        while True:
            parts_now = replace(
                parts,
                recent_history=parts.recent_history[dropped_history:],
                previous_summaries=parts.previous_summaries[dropped_summaries:],
                long_term="" if long_term_dropped else parts.long_term,
            )
            text = render_context(parts_now)
            (n_tokens,) = count_tokens([text])
            if n_tokens <= max_tokens:
                parts = parts_now
                break
            if dropped_history < n_history:
                dropped_history += 1
            elif dropped_summaries < n_summaries:
                dropped_summaries += 1
            elif not long_term_dropped and parts.long_term:
                long_term_dropped = True
            else:
                raise BudgetError(
                    f"context needs {n_tokens} tokens for the parts that are never dropped "
                    f"(instruction, profile, current-session summary) but context.max_tokens is "
                    f"{max_tokens}: raise context.max_tokens or shorten context.instruction"
                )
        return FittedContext(parts, text, n_tokens, dropped_summaries, dropped_history, long_term_dropped)
    return FittedContext(parts, text, n_tokens, 0, 0, False)


def _flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    """Nested profile dicts as sorted ("a.b", "value") pairs, empty values left out."""
    if isinstance(value, dict):
        return [pair for key in sorted(value) for pair in _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))]
    if value is None or value == "" or value == [] or value == {}:
        return []
    return [(prefix, str(value))]


def render_profile(profile: dict, earlier: Sequence[SessionText]) -> str:
    """Source profile fields plus what the user's earlier sessions show about how they write."""
    lines = [f"{key.replace('_', ' ')}: {value}" for key, value in _flatten(profile)]
    if not earlier:
        lines.append("No earlier conversations with this user.")
        return "\n".join(lines)
    user_texts = [text for session in earlier for text in session.user_messages]
    n_user = max(len(user_texts), 1)
    mean_words = sum(len(words(text)) for text in user_texts) / n_user
    questions = sum("?" in text for text in user_texts) / n_user
    per_session = len(user_texts) / len(earlier)
    lines.append(
        f"Earlier conversations: {len(earlier)}; about {per_session:.0f} messages per conversation, "
        f"{mean_words:.0f} words per message; {questions:.0%} of messages are questions."
    )
    return "\n".join(lines)


def render_long_term(earlier: Sequence[SessionText], min_sessions: int = 2, k: int = 8) -> str:
    """Topics that recur in at least `min_sessions` earlier sessions (absent otherwise)."""
    if len(earlier) < min_sessions:
        return ""
    document_frequency = Counter(
        word for session in earlier for word in set(content_words([t for _, t in session.messages]))
    )
    recurring = sorted(
        ((word, n) for word, n in document_frequency.items() if n >= min_sessions), key=lambda item: (-item[1], item[0])
    )[:k]
    if not recurring:
        return f"{len(earlier)} earlier conversations with no clearly recurring topic."
    topics = ", ".join(f"{word} ({n} sessions)" for word, n in recurring)
    return f"Across {len(earlier)} earlier conversations, recurring topics: {topics}."


def _optional(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


def _describe_session(started_at: str | None, topic: str | None, summary: str) -> str:
    when = f"On {started_at[:10]}: " if started_at else ""
    about = f"(topic: {topic}) " if topic else ""
    return f"{when}{about}{summary}"


def build_contexts(
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    users: pd.DataFrame,
    params: ContextParams,
    summariser: Summariser,
    count_tokens: TokenCounter,
    progress: bool = True,
) -> pd.DataFrame:
    """One fitted context per session (rows follow the contexts schema)."""
    by_session: dict[str, list[tuple[str, str]]] = {}
    for session_id, role, text in messages.sort_values(["session_id", "turn_index"])[
        ["session_id", "role", "text"]
    ].itertuples(index=False):
        by_session.setdefault(session_id, []).append((role, text))
    profiles = {row.user_id: json.loads(row.profile) for row in users.itertuples(index=False)}

    ordered = sessions.sort_values(["user_id", "session_index"])
    session_texts = {
        row.session_id: SessionText(tuple(by_session.get(row.session_id, ())), _optional(row.topic))
        for row in ordered.itertuples(index=False)
    }
    summaries: dict[str, str] = {}
    for session_id in tqdm(list(session_texts), desc="summarise sessions", unit="session", disable=not progress):
        summaries[session_id] = summariser.summarise(session_texts[session_id])

    rows = []
    for user_id, user_sessions in tqdm(
        ordered.groupby("user_id", sort=True), desc="build contexts", unit="user", disable=not progress
    ):
        history = list(user_sessions.itertuples(index=False))
        for position, session in enumerate(history):
            earlier = history[:position]
            earlier_texts = [session_texts[s.session_id] for s in earlier]
            topic = _optional(session.topic)
            current = summaries[session.session_id]
            if topic:
                current = f"{TOPIC_LABELS.get(session.source, 'Session topic')}: {topic}\n{current}"
            recent = ()
            if earlier and params.max_history_messages:
                recent = earlier_texts[-1].messages[-params.max_history_messages :]
            previous = ()
            if params.n_previous_summaries:
                previous = tuple(
                    _describe_session(_optional(s.started_at), _optional(s.topic), summaries[s.session_id])
                    for s in earlier[-params.n_previous_summaries :]
                )
            parts = ContextParts(
                instruction=params.instruction.strip(),
                profile=render_profile(profiles.get(user_id, {}), earlier_texts),
                long_term=render_long_term(earlier_texts),
                previous_summaries=previous,
                current_summary=current,
                recent_history=tuple(recent),
            )
            try:
                fitted = fit_context(parts, count_tokens, params.max_tokens)
            except BudgetError as exc:
                raise BudgetError(f"session {session.session_id}: {exc}") from None
            rows.append(
                {
                    "session_id": session.session_id,
                    "user_id": user_id,
                    "instruction": fitted.parts.instruction,
                    "profile": fitted.parts.profile,
                    "long_term": fitted.parts.long_term,
                    "previous_summaries": json.dumps(list(fitted.parts.previous_summaries), ensure_ascii=False),
                    "current_summary": fitted.parts.current_summary,
                    "recent_history": json.dumps(
                        [{"role": role, "text": text} for role, text in fitted.parts.recent_history], ensure_ascii=False
                    ),
                    "context_text": fitted.text,
                    "n_tokens": fitted.n_tokens,
                    "n_previous_summaries_dropped": fitted.n_previous_summaries_dropped,
                    "n_history_messages_dropped": fitted.n_history_messages_dropped,
                    "long_term_dropped": fitted.long_term_dropped,
                }
            )
    return pd.DataFrame(rows)


def contexts_report(contexts: pd.DataFrame, params: ContextParams, summariser: Summariser) -> dict:
    tokens = contexts["n_tokens"]
    return {
        "sessions": int(len(contexts)),
        "max_tokens_budget": params.max_tokens,
        "tokens": {
            "mean": round(float(tokens.mean()), 1) if len(tokens) else 0.0,
            "max": int(tokens.max()) if len(tokens) else 0,
            "min": int(tokens.min()) if len(tokens) else 0,
        },
        "sessions_truncated": int(
            ((contexts["n_previous_summaries_dropped"] > 0) | (contexts["n_history_messages_dropped"] > 0) | contexts["long_term_dropped"]).sum()
        ),
        "with_long_term": int((contexts["long_term"] != "").sum()),
        "with_previous_summaries": int((contexts["previous_summaries"] != "[]").sum()),
        "with_recent_history": int((contexts["recent_history"] != "[]").sum()),
        "summariser": params.summariser,
        "summary_fallbacks": int(getattr(summariser, "fallbacks", 0)),
    }


def run_build_contexts(params: ContextParams, scrubbed_dir: Path, model_dir: Path, out_path: Path, report_path: Path) -> pd.DataFrame:
    """Stage: scrubbed sessions → one budgeted context per session."""
    from dial import io, paths
    from dial.checks import assert_checks
    from dial.models import count_tokens, load_tokenizer
    from dial.summarise import make_summariser

    sessions = io.SESSIONS.read(paths.sessions_file(scrubbed_dir))
    messages = io.MESSAGES.read(paths.messages_file(scrubbed_dir))
    users = io.USERS.read(paths.users_file(scrubbed_dir))
    assert_checks(
        {"sessions": sessions, "messages": messages, "users": users},
        ["message_session_exists", "session_has_user_message", "session_user_exists", "no_pii_pattern"],
        where=str(scrubbed_dir),
    )
    tokenizer = load_tokenizer(model_dir)
    summariser = make_summariser(params)
    contexts = build_contexts(
        sessions, messages, users, params, summariser, lambda texts: count_tokens(tokenizer, list(texts))
    )
    assert_checks(
        {"sessions": sessions, "contexts": contexts},
        ["contexts_cover_sessions", "contexts_within_budget"],
        limits={"max_context_tokens": params.max_tokens},
        where=str(out_path),
    )
    io.CONTEXTS.write(contexts, out_path)
    io.write_json_atomic(report_path, contexts_report(contexts, params, summariser))
    return contexts
