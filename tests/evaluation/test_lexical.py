"""Lexical diversity per session (entropy in bits, TTR, within-message bigram diversity) and its
summaries, against hand-computed values and scipy/numpy on random inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from dial.evaluation import lexical


def messages(rows):
    """rows: (session_id, role, text) in turn order per session."""
    frame = pd.DataFrame(rows, columns=["session_id", "role", "text"])
    frame["turn_index"] = frame.groupby("session_id").cumcount()
    return frame


def sessions(*ids):
    return pd.DataFrame({"session_id": list(ids)})


def test_words_lowercase_keep_inner_apostrophes_and_drop_punctuation():
    assert lexical.words("Don't STOP—me now!! don’t 42_x 😀 Café") == ["don't", "stop", "me", "now", "don't", "42", "x", "café"]
    assert lexical.words("...") == []


def test_hand_computed_values():
    assert lexical.word_entropy(["a", "a", "b", "b"]) == pytest.approx(1.0)  # bits
    assert lexical.word_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert lexical.word_entropy(["a", "a"]) == 0.0 and math.isnan(lexical.word_entropy([]))
    assert lexical.word_entropy(["a", "a", "a", "b"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert lexical.type_token_ratio(["a", "a", "b"]) == pytest.approx(2 / 3)
    # "a b a b" | "b a": bigrams (a,b) (b,a) (a,b) within the first, (b,a) within the second → 2 distinct / 4.
    metrics = lexical.session_metrics(["a b a b", "b a"])
    assert metrics["n_bigrams"] == 4 and metrics["bigram_diversity"] == pytest.approx(0.5)
    # Bigrams never span two messages: "a b" | "c d" has 2 bigrams, not 3.
    assert lexical.session_metrics(["a b", "c d"])["n_bigrams"] == 2


def test_per_session_uses_only_user_messages_in_turn_order():
    frame = messages([
        ("s1", "user", "hello hello"), ("s1", "assistant", "unrelated words here"), ("s1", "user", "world"),
        ("s2", "assistant", "only the chatbot"),
    ])
    per = lexical.per_session(sessions("s2", "s1"), frame)
    assert list(per["session_id"]) == ["s1", "s2"]
    s1 = per.iloc[0]
    assert (s1["n_words"], s1["n_types"], s1["n_user_messages"]) == (3, 2, 2)
    assert s1["type_token_ratio"] == pytest.approx(2 / 3)
    assert s1["bigram_diversity"] == pytest.approx(1.0)  # one bigram (hello, hello)
    s2 = per.iloc[1]
    assert s2["n_words"] == 0 and math.isnan(s2["word_entropy"]) and math.isnan(s2["type_token_ratio"])


def test_summary_counts_undefined_sessions_and_uses_sample_std():
    frame = messages([("a", "user", "x y"), ("b", "user", "x x y z"), ("c", "user", "one"), ("d", "assistant", "hi")])
    summary = lexical.lexical_summary(sessions("a", "b", "c", "d"), frame)
    assert summary["n_sessions"] == 4
    assert summary["word_entropy_n_undefined"] == 1  # d: no user word
    assert summary["bigram_diversity_n_undefined"] == 2  # c (one word) and d
    ttr = [1.0, 0.75, 1.0]
    assert summary["type_token_ratio_mean"] == pytest.approx(np.mean(ttr))
    assert summary["type_token_ratio_median"] == pytest.approx(1.0)
    assert summary["type_token_ratio_std"] == pytest.approx(np.std(ttr, ddof=1))
    single = lexical.lexical_summary(sessions("a"), frame)
    assert single["word_entropy_std"] == 0.0
    empty = lexical.lexical_summary(sessions(), frame)
    assert empty["n_sessions"] == 0 and empty["word_entropy_mean"] is None


WORD = st.sampled_from(["i", "am", "so", "tired", "today", "ok", "thanks", "bye", "why", "no"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(WORD, min_size=0, max_size=12), min_size=1, max_size=5))
def test_matches_scipy_and_direct_definitions_on_random_sessions(turns):
    texts = [" ".join(turn) for turn in turns]
    metrics = lexical.session_metrics(texts)
    tokens = [w for turn in turns for w in turn]
    if tokens:
        counts = pd.Series(tokens).value_counts().to_numpy()
        assert metrics["word_entropy"] == pytest.approx(scipy_stats.entropy(counts, base=2), abs=1e-12)
        assert metrics["type_token_ratio"] == pytest.approx(len(set(tokens)) / len(tokens))
    pairs = [(t[i], t[i + 1]) for t in turns for i in range(len(t) - 1)]
    if pairs:
        assert metrics["bigram_diversity"] == pytest.approx(len(set(pairs)) / len(pairs))
    else:
        assert math.isnan(metrics["bigram_diversity"])
