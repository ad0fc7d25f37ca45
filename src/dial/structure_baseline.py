"""A structure-only baseline beside the discriminator (issue #11): how well real and simulated
sessions can be told apart by their shape alone, without reading a word.

The discriminator should win only on what the simulator controls. A logistic regression on
structural features of exactly the sessions the discriminator uses (same pairs, same train /
valid split, each session cut after its last scored user message, i.e. at `max_user_turns` or
the token budget) shows how much of that is there to win. A discriminator not clearly above it
may be reading structure rather than the user's words; a baseline well above 50 % says the
simulator's sessions are shaped differently from real ones.

The features are read from the sessions themselves, not from the discriminator's view: they
include what the `user_only` view hides (bursts of user messages, chatbot messages, who opens),
so the baseline measures the structural gap between the classes, which the `full` view exposes
to the discriminator and `user_only` does not. Who sent the last message is not a feature: after
the cut every session ends with a user message.

    user_messages                 user messages
    chatbot_messages              chatbot messages before the last user message
    user_turns                    runs of consecutive user messages
    user_messages_per_turn_mean   burst size, mean and max over the user turns
    user_messages_per_turn_max
    chatbot_messages_per_turn_max longest run of consecutive chatbot messages
    chatbot_opens                 1 if the chatbot sent the first message
    user_words_mean, user_words_max, user_chars_mean, user_chars_max
    user_at_generation_cap        share of user messages at the simulator's length cap (only when
                                  the cap is known: a capped generation stops mid-sentence)

Model: features standardised with the train split's mean and standard deviation, logistic
regression by Newton's method with a small L2 penalty on the weights (finite weights even when the
classes are separable), predicted real when the logit ≥ 0, as the discriminator. One prediction
per validation session (the discriminator's last p_t sees the same session); accuracy with its 95 %
Wilson interval over the n validation sessions (weighted as the discriminator's metrics when a real
session is held out with several simulations: n is then Kish's effective size). Deterministic: no
sampling anywhere.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from dial.evaluation.stats import effective_sample_size, wilson_interval
from dial.summarise import words

STRUCTURE_FEATURES = (
    "user_messages",
    "chatbot_messages",
    "user_turns",
    "user_messages_per_turn_mean",
    "user_messages_per_turn_max",
    "chatbot_messages_per_turn_max",
    "chatbot_opens",
    "user_words_mean",
    "user_words_max",
    "user_chars_mean",
    "user_chars_max",
)
AT_CAP_FEATURE = "user_at_generation_cap"
# Decoding then stripping whitespace can lose a token at each end of a capped generation, and
# re-tokenising the text can merge one: a message this close to the cap counts as at the cap.
CAP_MARGIN_TOKENS = 2
L2_PENALTY = 1.0  # on the standardised weights, not the bias
NEWTON_STEPS = 100
NEWTON_TOLERANCE = 1e-10

TokenCounter = Callable[[list[str]], list[int]]


def cut_after_user_message(turns: Sequence[tuple[str, str]], n_user: int) -> list[tuple[str, str]]:
    """The turns up to and including the `n_user`-th user message (what the discriminator reads)."""
    seen = 0
    for index, (role, _) in enumerate(turns):
        if role == "user":
            seen += 1
            if seen == n_user:
                return list(turns[: index + 1])
    return list(turns)


def _runs(turns: Sequence[tuple[str, str]], role: str) -> list[int]:
    """Lengths of the runs of consecutive messages of `role`."""
    runs, current = [], 0
    for turn_role, _ in turns:
        if turn_role == role:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


def structure_features(
    turns: Sequence[tuple[str, str]], user_tokens: Sequence[int] | None = None, cap_tokens: int = 0
) -> list[float]:
    """STRUCTURE_FEATURES of one (cut) session, then AT_CAP_FEATURE when `cap_tokens` > 0
    (`user_tokens`: the token count of each user message)."""
    user_texts = [text for role, text in turns if role == "user"]
    if not user_texts:
        raise ValueError("structure_features: a session without a user message")
    user_runs, chatbot_runs = _runs(turns, "user"), _runs(turns, "assistant")
    word_counts = [len(words(text)) for text in user_texts]
    char_counts = [len(text) for text in user_texts]
    features = [
        len(user_texts),
        sum(chatbot_runs),
        len(user_runs),
        len(user_texts) / len(user_runs),
        max(user_runs),
        max(chatbot_runs, default=0),
        float(turns[0][0] != "user"),
        float(np.mean(word_counts)),
        max(word_counts),
        float(np.mean(char_counts)),
        max(char_counts),
    ]
    if cap_tokens:
        if user_tokens is None or len(user_tokens) != len(user_texts):
            raise ValueError("structure_features: the at-cap feature needs one token count per user message")
        features.append(sum(n >= cap_tokens - CAP_MARGIN_TOKENS for n in user_tokens) / len(user_texts))
    return [float(value) for value in features]


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, l2: float = L2_PENALTY) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising the summed log-loss + l2/2·|w|² by Newton's method (the
    penalty makes it strictly convex, so the steps converge from zero)."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.diag([l2] * d + [0.0])
    theta = np.zeros(d + 1)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - y) + penalty @ theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < NEWTON_TOLERANCE:
            break
    return theta[:d], float(theta[d])


def structure_baseline(
    train: Sequence[tuple[Sequence[tuple[str, str]], bool]],
    valid: Sequence[tuple[Sequence[tuple[str, str]], bool]],
    count_tokens: TokenCounter | None = None,
    cap_tokens: int = 0,
    valid_weights: Sequence[float] | None = None,
) -> dict:
    """Fit on `train` and score `valid`, each a list of (cut session turns, is_real):
    {"accuracy", "ci_low", "ci_high", "n", "features", "train_n"} (accuracy and interval None
    without validation sessions). `valid_weights` (one per validation session; the discriminator's
    paired weights) weigh the accuracy; unequal weights add `n_effective` (Kish), the n of the
    Wilson interval."""
    names = list(STRUCTURE_FEATURES) + ([AT_CAP_FEATURE] if cap_tokens else [])

    def matrix(sessions) -> np.ndarray:
        rows = []
        for turns, _ in sessions:
            user_tokens = None
            if cap_tokens:
                if count_tokens is None:
                    raise ValueError("structure_baseline: cap_tokens needs count_tokens")
                user_tokens = count_tokens([text for role, text in turns if role == "user"])
            rows.append(structure_features(turns, user_tokens, cap_tokens))
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(names))

    result = {"accuracy": None, "ci_low": None, "ci_high": None, "n": len(valid), "features": names, "train_n": len(train)}
    if not train or not valid:
        return result
    x_train, x_valid = matrix(train), matrix(valid)
    y_train = np.array([is_real for _, is_real in train], dtype=np.float64)
    y_valid = np.array([is_real for _, is_real in valid], dtype=bool)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays 0 after centring
    weights, bias = fit_logistic_regression((x_train - mean) / std, y_train)
    predicted_real = ((x_valid - mean) / std) @ weights + bias >= 0
    weights = np.ones(len(valid)) if valid_weights is None else np.asarray(valid_weights, dtype=np.float64)
    if weights.shape != (len(valid),) or (weights <= 0).any():
        raise ValueError("structure_baseline: one positive weight per validation session")
    accuracy = float(weights[predicted_real == y_valid].sum() / weights.sum())
    n_effective = effective_sample_size(weights)
    if not np.all(weights == weights[0]):
        result["n_effective"] = round(n_effective, 3)
    low, high = wilson_interval(accuracy * n_effective, n_effective)  # n_effective = n when unweighted
    result.update(accuracy=round(accuracy, 6), ci_low=round(low, 6), ci_high=round(high, 6))
    return result
