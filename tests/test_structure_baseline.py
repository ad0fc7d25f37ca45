"""The structure-only baseline: features worked out by hand, separates classes whose shape differs
(real bursts), stays at chance when the shape is the same, and is deterministic."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dial.structure_baseline import (
    AT_CAP_FEATURE,
    STRUCTURE_FEATURES,
    cut_after_user_message,
    fit_logistic_regression,
    structure_baseline,
    structure_features,
)

VOCAB = "i feel tired work today maybe walk dog exam sleep family weekend help thanks".split()


def test_features_of_a_session_worked_out_by_hand():
    turns = [("assistant", "hi"), ("user", "so tired"), ("user", "work was long today"), ("assistant", "oh"),
             ("assistant", "why?"), ("user", "boss")]
    features = dict(zip(STRUCTURE_FEATURES, structure_features(turns)))
    assert features == {
        "user_messages": 3.0,
        "chatbot_messages": 3.0,
        "user_turns": 2.0,  # [so tired, work was long today], [boss]
        "user_messages_per_turn_mean": 1.5,
        "user_messages_per_turn_max": 2.0,
        "chatbot_messages_per_turn_max": 2.0,
        "chatbot_opens": 1.0,
        "user_words_mean": (2 + 4 + 1) / 3,
        "user_words_max": 4.0,
        "user_chars_mean": (8 + 19 + 4) / 3,
        "user_chars_max": 19.0,
    }


def test_at_cap_share_counts_messages_within_the_margin_of_the_cap():
    turns = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")]
    # cap 40: 38 and 40 tokens count as capped (decoding strips a token at each end), 37 does not.
    assert structure_features(turns, [38, 37, 40], cap_tokens=40)[-1] == pytest.approx(2 / 3)
    assert len(structure_features(turns)) == len(STRUCTURE_FEATURES)


def test_cut_keeps_everything_up_to_the_nth_user_message():
    turns = [("assistant", "hi"), ("user", "a"), ("user", "b"), ("assistant", "c"), ("user", "d")]
    assert cut_after_user_message(turns, 2) == turns[:3]
    assert cut_after_user_message(turns, 3) == turns
    assert cut_after_user_message(turns, 9) == turns


def _user_text(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 12)))


def _session(rng: random.Random, bursts: bool) -> list[tuple[str, str]]:
    """User first, 2-4 user turns each answered once; with `bursts`, a user turn is 1-3 messages."""
    turns = []
    for _ in range(rng.randint(2, 4)):
        for _ in range(rng.randint(1, 3) if bursts else 1):
            turns.append(("user", _user_text(rng)))
        turns.append(("assistant", "a chatbot reply"))
    return turns


def _sessions(seed: int, n: int, real_bursts: bool) -> list[tuple[list[tuple[str, str]], bool]]:
    rng = random.Random(seed)
    return [item for _ in range(n) for item in ((_session(rng, real_bursts), True), (_session(rng, False), False))]


def test_baseline_separates_real_bursts_from_strict_turns():
    train, valid = _sessions(0, 100, real_bursts=True), _sessions(1, 100, real_bursts=True)
    result = structure_baseline(train, valid)
    assert result["n"] == 200 and result["train_n"] == 200
    assert result["features"] == list(STRUCTURE_FEATURES)
    assert result["ci_low"] > 0.75
    assert structure_baseline(train, valid) == result  # deterministic


def test_baseline_is_at_chance_when_both_classes_have_the_same_structure():
    train, valid = _sessions(2, 100, real_bursts=False), _sessions(3, 100, real_bursts=False)
    result = structure_baseline(train, valid)
    assert result["ci_low"] <= 0.5 <= result["ci_high"]


def _count_words(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def test_baseline_reads_the_generation_cap_when_given():
    """Simulated first messages stop at the cap (12 words here, one token per word), real ones
    rarely; everything else is shaped alike."""
    rng = random.Random(4)

    def session(real: bool) -> list[tuple[str, str]]:
        first = _user_text(rng) if real else " ".join(rng.choice(VOCAB) for _ in range(12))
        return [("user", first), ("assistant", "ok"), ("user", _user_text(rng))]

    train = [(session(real), real) for _ in range(60) for real in (True, False)]
    valid = [(session(real), real) for _ in range(60) for real in (True, False)]
    result = structure_baseline(train, valid, _count_words, cap_tokens=12)
    assert result["features"][-1] == AT_CAP_FEATURE
    assert result["accuracy"] > 0.7


def test_baseline_without_validation_sessions_reports_no_accuracy():
    result = structure_baseline(_sessions(5, 3, real_bursts=True), [])
    assert result == {"accuracy": None, "ci_low": None, "ci_high": None, "n": 0,
                      "features": list(STRUCTURE_FEATURES), "train_n": 6}


def test_logistic_regression_stays_finite_on_separable_data():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0.0, 0.0, 1.0, 1.0])
    weights, bias = fit_logistic_regression(x, y)
    assert np.isfinite(weights).all() and weights[0] > 0 and bias == pytest.approx(0.0, abs=1e-9)
    assert list(x @ weights + bias >= 0) == [False, False, True, True]


def test_weighted_accuracy_equals_the_accuracy_of_repeated_sessions():
    """A real session held out with k simulations weighs k: the same accuracy as repeating it k
    times, and a Wilson interval over the effective size (wider than the repeated sessions')."""
    train, valid = _sessions(6, 20, real_bursts=True), _sessions(7, 6, real_bursts=True)
    weights = [3.0 if is_real else 1.0 for _, is_real in valid]
    weighted = structure_baseline(train, valid, valid_weights=weights)
    repeated = structure_baseline(train, [item for item, w in zip(valid, weights) for _ in range(int(w))])
    assert weighted["accuracy"] == pytest.approx(repeated["accuracy"], abs=1e-6)
    assert weighted["n"] == len(valid) and weighted["n_effective"] == pytest.approx(24**2 / 60, abs=1e-3)
    assert weighted["ci_high"] - weighted["ci_low"] > repeated["ci_high"] - repeated["ci_low"]
    with pytest.raises(ValueError, match="one positive weight"):
        structure_baseline(train, valid, valid_weights=weights[:-1])
