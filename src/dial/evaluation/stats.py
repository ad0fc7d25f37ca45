"""The statistics of the DIAL paper's evaluation (§4.3.2, §5, appendix B; METHOD.md §6), in plain
numpy and `math` (no scipy at run time; the tests check every function against scipy).

Issue rate (figure 2)
    share of chatbot messages with at least one issue, k/n, with the binomial standard error
    √(p(1−p)/n) (the paper's error bars).

Issue-category distribution and KL (table 3, figure 4)
    categories counted over flagged (chatbot message, category) pairs and normalised to shares.
    KL(real ‖ sim) = Σ_i p_i ln(p_i / q_i) in **nats**. Without smoothing a category the simulator
    never triggers makes the divergence infinite, so both sides are smoothed, but with a *total*
    pseudo-count s spread evenly over the K categories of the shared list (α = s/K each; s = 1 is
    Perks' prior): p_i = (c_i + s/K) / (N + s). The pseudo-counts then weigh s against the N real
    observations whatever K is, so they cannot outweigh the data once N ≥ s (the smoothed shares
    differ from the observed ones by at most s/(N+s) in total variation; a per-category α of 0.5
    over 36 categories put 18 pseudo-counts against 17 real flagged messages). The same K (all
    categories seen in any group, plus the taxonomy's) is used for every simulator. Beside it,
    `kl_unsmoothed` gives the raw value over the real users' support, with the support size and how
    many of its categories the simulator never triggers (raw KL infinite, then left out).
    Undefined (None) when the real side has no issue, or when s = 0 and the simulator misses a
    category the real users have.

User actions and BCE (table 4)
    per action, p = share of real user messages with that action, q = the simulator's share (multi-
    label, not normalised). BCE(p, q) = −[p ln q + (1−p) ln(1−q)] per action with q clipped to
    [ε, 1−ε]. The paper writes eq. 7 as a sum over actions, but its table 4 values (0.06–0.32 per
    group, groups of different sizes) are per-action means, so each group's value (and the total)
    is the **mean** over its actions; the number of actions is reported beside it.

Predictive validity (table 3, appendix B.4)
    Pearson r between simulated and real issue rates across chatbot configurations; two-sided p
    from t = r·√((n−2)/(1−r²)) with n−2 degrees of freedom (the Student-t tail computed through
    the regularised incomplete beta function).

95 % intervals
    `wilson_interval`: the Wilson score interval of k successes in n independent trials (for a
    proportion such as a discriminator's accuracy over its n held-out messages).
    `resample_weights` + `percentile_interval`: the seeded percentile bootstrap over *sessions*.
    Row b of the weight matrix W counts how often each session was drawn in resample b (indices from
    `rng.integers(0, n, (B, n))`, as `scipy.stats.bootstrap` draws them), so any sum over the
    resampled sessions is `W @ x`: a per-session mean is `W @ x / n`, and a per-message rate
    clustered by session is `(W @ k) / (W @ n)` (sessions, not messages, are drawn: the messages of
    one session are not independent).

Power (two-proportion test)
    `two_proportion_power(n, p1, p2)`: power of the two-sided pooled z-test at level α with n per
    arm, Φ((|p1−p2|·√n − z_{1−α/2}·√(2p̄(1−p̄))) / √(p1(1−p1)+p2(1−p2))), the far tail neglected;
    `two_proportion_sample_size` inverts it (the classical Fleiss formula without continuity
    correction: 388 per arm for 50 % vs 60 %, α = 0.05, power 0.8).

A/B replication (table 5)
    two-proportion z-test with the pooled proportion, z = (p_T − p_C) / √(p̂(1−p̂)(1/n_C + 1/n_T)),
    two-sided p = erfc(|z|/√2); positive z = the treatment has more issues. Directions agree when
    the simulated and real differences have the same sign.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

from dial.errors import DialError

MIN_CONFIGURATIONS = 3  # Pearson across chatbots needs at least 3 points (1 degree of freedom)


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1] (got {x})")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0 (got {df})")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def normal_two_sided_p(z: float) -> float:
    """P(|Z| ≥ |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# --------------------------------------------------------------------------------------------
# Rates, KL, BCE
# --------------------------------------------------------------------------------------------


def proportion(k: int, n: int) -> dict:
    """k of n with its binomial standard error √(p(1−p)/n); rate and se are None when n = 0."""
    if k < 0 or n < 0 or k > n:
        raise DialError(f"proportion: need 0 <= k <= n (got k={k}, n={n})")
    if n == 0:
        return {"rate": None, "se": None, "k": 0, "n": 0}
    rate = k / n
    return {"rate": rate, "se": math.sqrt(rate * (1.0 - rate) / n), "k": int(k), "n": int(n)}


def smoothed_distribution(counts: Mapping[str, float], categories: Sequence[str], smoothing: float) -> np.ndarray:
    """(c_i + s/K) / (N + s) over the K `categories` (missing ones count 0): a total of `smoothing`
    pseudo-counts spread evenly (module docstring)."""
    if smoothing < 0:
        raise DialError(f"smoothing must be >= 0 (got {smoothing})")
    if not categories:
        raise DialError("smoothed_distribution: empty category list")
    values = np.array([float(counts.get(category, 0.0)) for category in categories], dtype=np.float64)
    values += smoothing / len(categories)
    total = values.sum()
    if total <= 0:
        raise DialError("smoothed_distribution: no counts and no smoothing")
    return values / total


def kl_divergence(
    p_counts: Mapping[str, float],
    q_counts: Mapping[str, float],
    categories: Sequence[str] | None = None,
    smoothing: float = 1.0,
) -> float | None:
    """KL(p ‖ q) in nats of two count tables, each smoothed with a total of `smoothing`
    pseudo-counts spread over `categories` (module docstring).

    `categories` defaults to the union of both tables' keys; extra counts outside `categories` are
    an error. None when undefined (p has no count; q lacks a category p has and smoothing = 0)."""
    keys = sorted(set(p_counts) | set(q_counts)) if categories is None else list(categories)
    unknown = (set(p_counts) | set(q_counts)) - set(keys)
    if unknown:
        raise DialError(f"kl_divergence: counts for categories outside the category list: {sorted(unknown)}")
    if not keys or sum(p_counts.values()) <= 0:
        return None
    if smoothing == 0 and sum(q_counts.values()) <= 0:
        return None
    p = smoothed_distribution(p_counts, keys, smoothing)
    q = smoothed_distribution(q_counts, keys, smoothing)
    support = p > 0
    if np.any(q[support] == 0):
        return None
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def kl_unsmoothed(p_counts: Mapping[str, float], q_counts: Mapping[str, float]) -> dict:
    """The raw KL(p ‖ q) over p's support, its size, and how many of its categories q never has
    (then the raw value is infinite and reported as None)."""
    support = sorted(c for c, n in p_counts.items() if n > 0)
    missing = sum(1 for c in support if q_counts.get(c, 0) <= 0)
    value = None
    if support and not missing:
        value = kl_divergence({c: p_counts[c] for c in support}, q_counts, sorted(set(support) | set(q_counts)), 0.0)
    return {"value": value, "support": len(support), "sim_missing": missing}


def bce(p: np.ndarray | Sequence[float], q: np.ndarray | Sequence[float], eps: float = 1e-6) -> np.ndarray:
    """Elementwise −[p ln q + (1−p) ln(1−q)] with q clipped to [eps, 1−eps]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.clip(np.asarray(q, dtype=np.float64), eps, 1.0 - eps)
    if np.any((p < 0) | (p > 1)):
        raise DialError("bce: p must be within [0, 1]")
    return -(p * np.log(q) + (1.0 - p) * np.log1p(-q))


def bce_by_group(
    real_rates: Mapping[str, float],
    sim_rates: Mapping[str, float],
    group_of: Mapping[str, str],
    eps: float = 1e-6,
) -> dict:
    """Per-action BCE(real, sim) averaged per group and over all actions (module docstring).

    Every action of `group_of` counts; an action absent from a rate table has rate 0."""
    actions = sorted(group_of)
    if not actions:
        return {"total": None, "n_actions": 0, "groups": {}}
    losses = bce([real_rates.get(a, 0.0) for a in actions], [sim_rates.get(a, 0.0) for a in actions], eps)
    loss_of = dict(zip(actions, losses))
    groups: dict[str, dict] = {}
    for group in sorted(set(group_of.values())):
        members = [a for a in actions if group_of[a] == group]
        groups[group] = {"bce": float(np.mean([loss_of[a] for a in members])), "n_actions": len(members)}
    return {"total": float(np.mean(losses)), "n_actions": len(actions), "groups": groups}


# --------------------------------------------------------------------------------------------
# 95 % intervals and power
# --------------------------------------------------------------------------------------------

CONFIDENCE = 0.95


def _z(probability: float) -> float:
    return NormalDist().inv_cdf(probability)


def wilson_interval(k: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials; None when n = 0. Weighted data pass the
    weighted rate times the effective sample size as k and that size as n (both may be fractional)."""
    if k < 0 or n < 0 or k > n:
        raise DialError(f"wilson_interval: need 0 <= k <= n (got k={k}, n={n})")
    if n == 0:
        return None
    z = _z(0.5 + confidence / 2)
    rate = k / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def effective_sample_size(weights: np.ndarray | Sequence[float]) -> float:
    """Kish's effective sample size of weighted observations, (Σw)² / Σw²: n when the weights are
    equal, less when they are not. The n of a Wilson interval of a weighted rate."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(weights.sum() ** 2 / (weights**2).sum()) if weights.size else 0.0


def stable_rng(seed: int, *labels: str) -> np.random.Generator:
    """A generator seeded by `seed` and labels (a group name, a metric family): the draws of one
    group do not depend on which other groups exist or in what order they are measured."""
    digest = hashlib.sha256("\x1f".join(labels).encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "big")])


def resample_weights(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n) matrix: how often each of n sessions is drawn in each bootstrap resample
    (module docstring). Empty columns when n = 0."""
    weights = np.zeros((n_resamples, n), dtype=np.float64)
    if n == 0:
        return weights
    drawn = rng.integers(0, n, (n_resamples, n))
    np.add.at(weights, (np.repeat(np.arange(n_resamples), n), drawn.ravel()), 1.0)
    return weights


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The percentile interval of bootstrap replicates (undefined replicates, NaN, left out); None
    when fewer than half of them are defined (the statistic is mostly undefined on resamples)."""
    values = np.asarray(replicates, dtype=np.float64)
    defined = values[np.isfinite(values)]
    if values.size == 0 or defined.size * 2 < values.size:
        return None
    tail = (1 - confidence) / 2
    low, high = np.percentile(defined, [100 * tail, 100 * (1 - tail)])
    return float(low), float(high)


def ratio_replicates(weights: np.ndarray, numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Σ numerators / Σ denominators over each resample of sessions (NaN where the sum of
    denominators is 0): a per-message rate clustered by session."""
    top, bottom = weights @ np.asarray(numerators, dtype=np.float64), weights @ np.asarray(denominators, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def two_proportion_power(n_per_arm: int, p1: float, p2: float, alpha: float = 0.05) -> float:
    """Power of the two-sided pooled two-proportion z-test with `n_per_arm` in each arm (module
    docstring)."""
    if n_per_arm <= 0:
        return 0.0
    pooled = (p1 + p2) / 2
    spread = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    z = (abs(p1 - p2) * math.sqrt(n_per_arm) - _z(1 - alpha / 2) * math.sqrt(2 * pooled * (1 - pooled))) / spread
    return NormalDist().cdf(z)


def two_proportion_sample_size(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Smallest n per arm at which `two_proportion_power` reaches `power` (Fleiss, no continuity
    correction)."""
    if p1 == p2:
        raise DialError("two_proportion_sample_size: the two proportions are equal")
    pooled = (p1 + p2) / 2
    root_n = (_z(1 - alpha / 2) * math.sqrt(2 * pooled * (1 - pooled)) + _z(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2)))
    return math.ceil(root_n * root_n / (p1 - p2) ** 2)


# --------------------------------------------------------------------------------------------
# Correlation and tests
# --------------------------------------------------------------------------------------------


def pearson_p_value(r: float, n: int) -> float:
    """Two-sided p of Pearson's r over n pairs: t = r·√((n−2)/(1−r²)), n−2 degrees of freedom."""
    if n < 3:
        raise DialError(f"pearson_p_value: need at least 3 pairs (got {n})")
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    return student_t_two_sided_p(t, n - 2)


def pearson(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson r, its t statistic and two-sided p over paired values."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise DialError(f"pearson: x and y must be 1-d and of the same length (got {x.shape}, {y.shape})")
    n = int(x.size)
    if n < 3:
        raise DialError(f"pearson: need at least 3 pairs (got {n})")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # exact test: a mean of equal floats can be off by an ulp
        raise DialError("pearson: r is undefined when x or y is constant")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    r = max(-1.0, min(1.0, float(dx @ dy) / denominator))
    t = math.copysign(math.inf, r) if abs(r) >= 1.0 else r * math.sqrt((n - 2) / (1.0 - r * r))
    return {"r": r, "t": t if math.isfinite(t) else None, "p": pearson_p_value(r, n), "n": n}


def two_proportion_z_test(k_control: int, n_control: int, k_treatment: int, n_treatment: int) -> dict:
    """Pooled two-proportion z-test (module docstring); z and p are None when undefined (an empty
    arm, or a pooled rate of 0 or 1: no variance)."""
    control, treatment = proportion(k_control, n_control), proportion(k_treatment, n_treatment)
    result = {
        "control_rate": control["rate"],
        "treatment_rate": treatment["rate"],
        "control_n": int(n_control),
        "treatment_n": int(n_treatment),
        "difference": None,
        "z": None,
        "p": None,
    }
    if n_control == 0 or n_treatment == 0:
        return result
    result["difference"] = treatment["rate"] - control["rate"]
    pooled = (k_control + k_treatment) / (n_control + n_treatment)
    variance = pooled * (1.0 - pooled) * (1.0 / n_control + 1.0 / n_treatment)
    if variance <= 0:
        return result
    z = result["difference"] / math.sqrt(variance)
    result.update(z=z, p=normal_two_sided_p(z))
    return result


def directions_agree(a: float | None, b: float | None) -> bool | None:
    """Whether two differences have the same sign (both zero counts as agreeing); None if either is missing."""
    if a is None or b is None:
        return None
    return bool(np.sign(a) == np.sign(b))


# --------------------------------------------------------------------------------------------
# Predictive validity and A/B across chatbot configurations
# --------------------------------------------------------------------------------------------


def predictive_validity(sim_counts: Mapping[str, tuple[int, int]], real_counts: Mapping[str, tuple[int, int]]) -> dict:
    """Pearson r of simulated vs real issue rates across the chatbot configurations that have
    judged chatbot messages on both sides. Counts are (messages with an issue, chatbot messages)
    per chatbot id. Not applicable (with the reason) below `MIN_CONFIGURATIONS` configurations or
    when the rates of one side are all equal."""
    shared = sorted(c for c in set(sim_counts) & set(real_counts) if sim_counts[c][1] > 0 and real_counts[c][1] > 0)
    if len(shared) < MIN_CONFIGURATIONS:
        real_with_data = sorted(c for c, (_, n) in real_counts.items() if n > 0)
        why = (
            f"needs >= {MIN_CONFIGURATIONS} chatbot configurations with both real and simulated judged sessions; "
            f"found {len(shared)} ({', '.join(shared) or 'none'}); real sessions with a chatbot_id: "
            f"{', '.join(real_with_data) or 'none'}"
        )
        return {"applicable": False, "why": why, "n_configurations": len(shared)}
    sim = [sim_counts[c][0] / sim_counts[c][1] for c in shared]
    real = [real_counts[c][0] / real_counts[c][1] for c in shared]
    try:
        correlation = pearson(sim, real)
    except DialError as exc:
        return {"applicable": False, "why": str(exc), "n_configurations": len(shared)}
    return {
        "applicable": True,
        "n_configurations": len(shared),
        "r": correlation["r"],
        "p": correlation["p"],
        "t": correlation["t"],
        "chatbots": {c: {"sim_rate": s, "real_rate": r} for c, s, r in zip(shared, sim, real)},
    }


def ab_test(
    control: str,
    treatment: str,
    sim_counts: Mapping[str, tuple[int, int]],
    real_counts: Mapping[str, tuple[int, int]] | None = None,
) -> dict:
    """Control vs treatment issue rates in simulation (and in real data when both chatbots have
    judged real sessions): z-tests and whether the directions agree."""

    def side(counts: Mapping[str, tuple[int, int]] | None, where: str) -> dict:
        missing = [c for c in (control, treatment) if counts is None or counts.get(c, (0, 0))[1] == 0]
        if missing:
            return {"applicable": False, "why": f"no judged {where} chatbot messages for {', '.join(missing)}"}
        (k_c, n_c), (k_t, n_t) = counts[control], counts[treatment]
        return {"applicable": True, **two_proportion_z_test(k_c, n_c, k_t, n_t)}

    simulation, real = side(sim_counts, "simulated"), side(real_counts, "real")
    agree = directions_agree(simulation.get("difference"), real.get("difference"))
    return {"control": control, "treatment": treatment, "simulation": simulation, "real": real, "directions_agree": agree}
