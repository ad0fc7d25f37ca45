"""Lexical diversity of the user's messages (DIAL paper §4.3.1, table 1; METHOD.md §6).

Computed per session over everything the *user* wrote (chatbot messages are ignored), then
summarised across the sessions of a simulator (or of the real users):

Tokenisation
    Lower-cased text, words = maximal runs of letters/digits with inner apostrophes kept
    (`WORD_PATTERN`: "don't" is one word, "hi!!" is "hi", punctuation and emoji are not words; the
    typographic apostrophe ’ counts as ').
    A user message contributes its words in order; messages are taken in turn order.

Word entropy
    H = −Σ_w p(w) log₂ p(w) over the session's word frequencies, in **bits** (log base 2). The
    paper does not state the base; its real-user value 6.60 is plausible in bits (2^6.6 ≈ 97
    equiprobable words per session) and implausible in nats (e^6.6 ≈ 735). H = 0 for a session
    with one distinct word; undefined (NaN) without any word.

Type-token ratio
    distinct words / words; NaN without any word.

Bigram diversity
    distinct bigrams / bigrams, bigrams taken *within* each message (a pair spanning two messages
    is not a phrase the user wrote); NaN when the session has no bigram (only one-word messages).

Summaries
    mean, median and standard deviation across sessions, the std being the **sample** std
    (ddof = 1, pandas' default; 0 for a single session). Sessions where a metric is undefined are
    left out of that metric's summary and counted (`<metric>_n_undefined`), never silently.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

WORD_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
METRICS = ("word_entropy", "type_token_ratio", "bigram_diversity")
PER_SESSION_COLUMNS = ["session_id", "n_user_messages", "n_words", "n_types", "n_bigrams", *METRICS]


def words(text: str) -> list[str]:
    """The words of `text` (see the module docstring): lower-cased, letters/digits/inner apostrophes."""
    return WORD_PATTERN.findall(text.lower().replace("\u2019", "'"))


def word_entropy(tokens: Sequence[str]) -> float:
    """Shannon entropy of the word frequencies, in bits; NaN for no words."""
    if not tokens:
        return math.nan
    counts = np.fromiter(Counter(tokens).values(), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: -0.0 → 0.0 for a single word type


def type_token_ratio(tokens: Sequence[str]) -> float:
    return len(set(tokens)) / len(tokens) if tokens else math.nan


def bigrams(messages_words: Iterable[Sequence[str]]) -> list[tuple[str, str]]:
    """Bigrams within each message (never across two messages)."""
    return [pair for tokens in messages_words for pair in zip(tokens, tokens[1:])]


def bigram_diversity(pairs: Sequence[tuple[str, str]]) -> float:
    return len(set(pairs)) / len(pairs) if pairs else math.nan


def session_metrics(user_texts: Sequence[str]) -> dict:
    """All lexical metrics of one session, from its user messages in turn order."""
    per_message = [words(text) for text in user_texts]
    tokens = [token for message in per_message for token in message]
    pairs = bigrams(per_message)
    return {
        "n_user_messages": len(user_texts),
        "n_words": len(tokens),
        "n_types": len(set(tokens)),
        "n_bigrams": len(pairs),
        "word_entropy": word_entropy(tokens),
        "type_token_ratio": type_token_ratio(tokens),
        "bigram_diversity": bigram_diversity(pairs),
    }


def user_texts_by_session(messages: pd.DataFrame, session_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Each session's user messages in turn order.

    Sessions of `session_ids` without any user message map to an empty list."""
    users = messages[messages["role"] == "user"].sort_values(["session_id", "turn_index"], kind="stable")
    texts = {str(sid): list(group["text"]) for sid, group in users.groupby("session_id", sort=True)}
    if session_ids is None:
        return texts
    return {str(sid): texts.get(str(sid), []) for sid in session_ids}


def per_session(sessions: pd.DataFrame, messages: pd.DataFrame) -> pd.DataFrame:
    """One row per session of `sessions` (sorted by session_id) with its lexical metrics, over the
    messages given: the evaluation cuts real and simulated sessions alike first
    (`dial.evaluation.evaluate.cut_sessions`)."""
    session_ids = sorted(sessions["session_id"].astype(str))
    texts = user_texts_by_session(messages, session_ids)
    rows = [{"session_id": sid, **session_metrics(texts[sid])} for sid in session_ids]
    if not rows:
        return pd.DataFrame({column: pd.Series(dtype="float64") for column in PER_SESSION_COLUMNS}).astype({"session_id": str})
    return pd.DataFrame(rows, columns=PER_SESSION_COLUMNS)


def summarise(per_session_frame: pd.DataFrame) -> dict:
    """mean / median / sample std of each metric across sessions, plus counts (see module docstring)."""
    result: dict = {
        "n_sessions": int(len(per_session_frame)),
        "n_words_mean": float(per_session_frame["n_words"].mean()) if len(per_session_frame) else None,
    }
    for metric in METRICS:
        values = per_session_frame[metric].astype("float64")
        defined = values[np.isfinite(values)]
        result[f"{metric}_n_undefined"] = int(len(values) - len(defined))
        if defined.empty:
            result.update({f"{metric}_mean": None, f"{metric}_median": None, f"{metric}_std": None})
            continue
        result[f"{metric}_mean"] = float(defined.mean())
        result[f"{metric}_median"] = float(defined.median())
        result[f"{metric}_std"] = float(defined.std(ddof=1)) if len(defined) > 1 else 0.0
    return result


def lexical_summary(sessions: pd.DataFrame, messages: pd.DataFrame) -> dict:
    """Per-session metrics of `sessions`, summarised (one simulator or the real users)."""
    return summarise(per_session(sessions, messages))
