"""The evaluation statistics against scipy (and torch for BCE) on random inputs, hand-computed
values, and the p-values of the DIAL paper's table 3 (n = 14 chatbot configurations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats as scipy_stats

from dial.errors import DialError
from dial.evaluation import stats


@pytest.mark.parametrize(("r", "p"), [(0.484, 0.079), (0.629, 0.016), (0.685, 0.007), (0.564, 0.036), (0.528, 0.052), (0.781, 0.001)])
def test_paper_table3_p_values(r, p):
    assert round(stats.pearson_p_value(r, 14), 3) == p


def test_paper_table3_best_correlation():
    assert stats.pearson_p_value(0.818, 14) == pytest.approx(0.00035, abs=0.00001)  # paper: 0.0003
    assert round(stats.pearson_p_value(0.801, 14), 4) == 0.0006


def test_incomplete_beta_and_t_tail_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b, x = rng.uniform(0.1, 30), rng.uniform(0.1, 30), rng.uniform(0, 1)
        assert stats.regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-9, abs=1e-12)
    for t in (-40.0, -3.2, -0.5, 0.0, 0.1, 1.96, 7.5):
        for df in (1, 2, 5, 12, 100):
            assert stats.student_t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-9, abs=1e-15)


@settings(max_examples=80, deadline=None)
@given(st.integers(3, 40), st.integers(0, 2**31 - 1), st.floats(-0.99, 0.99))
def test_pearson_matches_scipy_on_random_inputs(n, seed, mix):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = mix * x + math.sqrt(1 - mix * mix) * rng.normal(size=n)
    ours = stats.pearson(x, y)
    reference = scipy_stats.pearsonr(x, y)
    assert ours["r"] == pytest.approx(reference.statistic, abs=1e-10)
    assert ours["p"] == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
    assert ours["n"] == n


def test_pearson_edge_cases():
    assert stats.pearson([1, 2, 3], [2, 4, 6])["p"] == 0.0
    with pytest.raises(DialError, match="constant"):
        stats.pearson([1, 1, 1], [1, 2, 3])
    with pytest.raises(DialError, match="at least 3"):
        stats.pearson([1, 2], [1, 2])


def test_two_proportion_z_test_against_the_pooled_formula_and_scipy_norm():
    result = stats.two_proportion_z_test(50, 1000, 80, 1000)
    pooled = 130 / 2000
    z = (0.08 - 0.05) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert result["z"] == pytest.approx(z)
    assert result["p"] == pytest.approx(2 * scipy_stats.norm.sf(abs(z)))
    assert result["difference"] == pytest.approx(0.03) and result["z"] > 0  # treatment has more issues
    rng = np.random.default_rng(1)
    for _ in range(100):
        n1, n2 = rng.integers(1, 5000, size=2)
        k1, k2 = rng.integers(0, n1 + 1), rng.integers(0, n2 + 1)
        out = stats.two_proportion_z_test(int(k1), int(n1), int(k2), int(n2))
        p = (k1 + k2) / (n1 + n2)
        if p in (0, 1):
            assert out["z"] is None and out["p"] is None
            continue
        expected = (k2 / n2 - k1 / n1) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
        assert out["z"] == pytest.approx(expected)
        assert out["p"] == pytest.approx(2 * scipy_stats.norm.sf(abs(expected)), rel=1e-9, abs=1e-300)


def test_two_proportion_z_test_undefined_cases():
    assert stats.two_proportion_z_test(0, 10, 0, 10)["z"] is None
    empty = stats.two_proportion_z_test(0, 0, 3, 10)
    assert empty["z"] is None and empty["difference"] is None and empty["treatment_rate"] == pytest.approx(0.3)


def test_proportion_and_standard_error():
    result = stats.proportion(3, 100)
    assert result["rate"] == pytest.approx(0.03) and result["se"] == pytest.approx(math.sqrt(0.03 * 0.97 / 100))
    assert stats.proportion(0, 0)["rate"] is None
    with pytest.raises(DialError):
        stats.proportion(5, 3)


def test_kl_hand_value_and_smoothing():
    # No smoothing: p = (1/2, 1/2), q = (1/4, 3/4).
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert stats.kl_divergence({"a": 1, "b": 1}, {"a": 1, "b": 3}, smoothing=0) == pytest.approx(expected)
    # A total of 3 pseudo-counts over K = 3 categories, 1 each: p = (1+1, 0+1, 0+1)/4, q = (0+1, 2+1, 0+1)/5.
    p, q = np.array([2, 1, 1]) / 4, np.array([1, 3, 1]) / 5
    value = stats.kl_divergence({"a": 1}, {"b": 2}, categories=["a", "b", "c"], smoothing=3.0)
    assert value == pytest.approx(float(np.sum(p * np.log(p / q))))
    assert stats.kl_divergence({"a": 1}, {"b": 2}, smoothing=0) is None  # sim misses "a": infinite
    assert stats.kl_divergence({}, {"b": 2}) is None  # no real issue: undefined
    assert stats.kl_divergence({"a": 3}, {"a": 3}, categories=["a", "b"]) == pytest.approx(0.0)
    with pytest.raises(DialError, match="outside"):
        stats.kl_divergence({"a": 1}, {"z": 1}, categories=["a"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=8), st.floats(0.01, 2.0))
def test_kl_matches_scipy_entropy(pairs, smoothing):
    categories = [f"c{i}" for i in range(len(pairs))]
    p_counts = {c: a for c, (a, _) in zip(categories, pairs)}
    q_counts = {c: b for c, (_, b) in zip(categories, pairs)}
    ours = stats.kl_divergence(p_counts, q_counts, categories, smoothing)
    if sum(p_counts.values()) == 0:
        assert ours is None
        return
    p = np.array([a for a, _ in pairs], dtype=float) + smoothing / len(pairs)
    q = np.array([b for _, b in pairs], dtype=float) + smoothing / len(pairs)
    assert ours == pytest.approx(scipy_stats.entropy(p, q), rel=1e-9, abs=1e-12)  # scipy normalises, natural log


def test_bce_matches_torch_and_is_averaged_per_group():
    rng = np.random.default_rng(2)
    p, q = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    q[:3] = [0.0, 1.0, 1e-9]  # clipped
    ours = stats.bce(p, q, eps=1e-6)
    reference = torch.nn.functional.binary_cross_entropy(
        torch.tensor(np.clip(q, 1e-6, 1 - 1e-6)), torch.tensor(p), reduction="none"
    ).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-10)
    real = {"agree": 0.2, "deny": 0.1, "ask": 0.5}
    sim = {"agree": 0.25, "ask": 0.4}  # "deny" never seen: rate 0 → clipped
    groups = {"agree": "Good", "ask": "Good", "deny": "Bad"}
    result = stats.bce_by_group(real, sim, groups, eps=1e-6)
    per = {a: float(stats.bce([real[a]], [sim.get(a, 0.0)], 1e-6)[0]) for a in groups}
    assert result["groups"]["Good"]["bce"] == pytest.approx((per["agree"] + per["ask"]) / 2)
    assert result["groups"]["Bad"] == {"bce": pytest.approx(per["deny"]), "n_actions": 1}
    assert result["total"] == pytest.approx(sum(per.values()) / 3) and result["n_actions"] == 3
    assert per["deny"] == pytest.approx(-0.1 * math.log(1e-6) - 0.9 * math.log(1 - 1e-6))
    # Identical rates minimise BCE for the given p.
    assert stats.bce([0.3], [0.3])[0] < stats.bce([0.3], [0.2])[0]


def test_predictive_validity_needs_three_configurations():
    sim = {"a": (3, 100), "b": (5, 100), "c": (9, 100), "d": (1, 50)}
    real = {"a": (2, 80), "b": (6, 90), "c": (10, 110)}
    result = stats.predictive_validity(sim, real)
    assert result["applicable"] and result["n_configurations"] == 3
    reference = scipy_stats.pearsonr([0.03, 0.05, 0.09], [2 / 80, 6 / 90, 10 / 110])
    assert result["r"] == pytest.approx(reference.statistic) and result["p"] == pytest.approx(reference.pvalue)
    two = stats.predictive_validity(sim, {"a": (1, 10), "b": (2, 10), "c": (0, 0)})
    assert not two["applicable"] and "found 2" in two["why"]
    flat = stats.predictive_validity(sim, {"a": (1, 10), "b": (1, 10), "c": (1, 10)})
    assert not flat["applicable"] and "constant" in flat["why"]


def test_ab_test_directions():
    sim = {"control": (20, 1000), "treatment": (40, 1000)}
    agree = stats.ab_test("control", "treatment", sim, {"control": (30, 1000), "treatment": (35, 1000)})
    assert agree["simulation"]["z"] > 0 and agree["real"]["z"] > 0 and agree["directions_agree"] is True
    disagree = stats.ab_test("control", "treatment", sim, {"control": (30, 1000), "treatment": (25, 1000)})
    assert disagree["directions_agree"] is False
    no_real = stats.ab_test("control", "treatment", sim, {})
    assert no_real["real"]["applicable"] is False and no_real["directions_agree"] is None
    assert stats.directions_agree(0.0, 0.0) is True and stats.directions_agree(None, 1.0) is None


def test_kl_smoothing_weighs_like_its_total_pseudo_count_whatever_the_number_of_categories():
    # 17 real flagged messages in 3 of 36 categories: one pseudo-count in total moves at most 1/18
    # of the mass (a pseudo-count of 0.5 per category would have moved 18/35 of it).
    categories = [f"c{i}" for i in range(36)]
    counts = {"c0": 10, "c1": 5, "c2": 2}
    smoothed = stats.smoothed_distribution(counts, categories, 1.0)
    observed = np.array([counts.get(c, 0) for c in categories]) / 17
    assert smoothed.sum() == pytest.approx(1.0)
    assert 0.5 * np.abs(smoothed - observed).sum() <= 1 / 18 + 1e-12
    assert smoothed[:3].sum() >= 17 / 18 - 1e-12


def test_kl_unsmoothed_reports_the_raw_value_and_the_support():
    raw = stats.kl_unsmoothed({"a": 2, "b": 2}, {"a": 1, "b": 3, "c": 5})
    assert raw["value"] == pytest.approx(scipy_stats.entropy([2, 2, 0], [1, 3, 5]))
    assert (raw["support"], raw["sim_missing"]) == (2, 0)
    missed = stats.kl_unsmoothed({"a": 1, "z": 1}, {"a": 1})
    assert missed == {"value": None, "support": 2, "sim_missing": 1}


@pytest.mark.parametrize(("k", "n"), [(0, 5), (3, 10), (16, 24), (24, 24), (57, 400)])
def test_wilson_interval_matches_scipy(k, n):
    reference = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = stats.wilson_interval(k, n)
    assert low == pytest.approx(reference.low, abs=1e-12) and high == pytest.approx(reference.high, abs=1e-12)


def test_wilson_interval_is_undefined_without_trials():
    assert stats.wilson_interval(0, 0) is None
    with pytest.raises(DialError):
        stats.wilson_interval(5, 3)


def test_resample_weights_count_the_draws_of_each_session():
    weights = stats.resample_weights(3, 4, np.random.default_rng(5))
    drawn = np.random.default_rng(5).integers(0, 3, (4, 3))
    np.testing.assert_array_equal(weights, np.stack([np.bincount(row, minlength=3) for row in drawn]))
    assert stats.resample_weights(0, 4, np.random.default_rng(5)).shape == (4, 0)


def test_bootstrap_mean_interval_matches_scipy_bootstrap_with_the_same_resamples():
    values = np.random.default_rng(3).normal(size=15)
    weights = stats.resample_weights(15, 2000, np.random.default_rng(7))
    ours = stats.percentile_interval(weights @ values / 15)
    reference = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(7))
    assert ours[0] == pytest.approx(reference.confidence_interval.low, rel=1e-10)
    assert ours[1] == pytest.approx(reference.confidence_interval.high, rel=1e-10)


def test_clustered_ratio_sums_numerators_and_denominators_of_the_drawn_sessions():
    flagged, messages = np.array([1.0, 0.0, 3.0]), np.array([2.0, 2.0, 4.0])
    weights = np.array([[1, 1, 1], [3, 0, 0], [0, 0, 3], [0, 3, 0], [0, 0, 0]], dtype=float)
    replicates = stats.ratio_replicates(weights, flagged, messages)
    np.testing.assert_allclose(replicates[:4], [4 / 8, 1 / 2, 3 / 4, 0.0])
    assert np.isnan(replicates[4])  # no message drawn: undefined


def test_clustered_interval_is_wider_than_wilson_when_a_sessions_messages_move_together():
    # 10 sessions of 10 chatbot messages; 5 sessions have every message flagged, 5 none. Wilson
    # treats the 100 messages as independent; the sessions are the real sample size.
    flagged, messages = np.array([10.0] * 5 + [0.0] * 5), np.full(10, 10.0)
    weights = stats.resample_weights(10, 2000, np.random.default_rng(0))
    clustered = stats.percentile_interval(stats.ratio_replicates(weights, flagged, messages))
    wilson = stats.wilson_interval(50, 100)
    assert clustered[1] - clustered[0] > 1.5 * (wilson[1] - wilson[0])
    # The session-level bootstrap of 5 of 10: the mean of 10 Bernoulli(0.5) draws, 95 % within ±0.3.
    assert clustered[0] == pytest.approx(0.2, abs=0.05) and clustered[1] == pytest.approx(0.8, abs=0.05)


def test_percentile_interval_needs_most_replicates_defined():
    assert stats.percentile_interval(np.array([np.nan, np.nan, 1.0])) is None
    assert stats.percentile_interval(np.array([], dtype=float)) is None
    assert stats.percentile_interval(np.array([1.0, 2.0, np.nan])) == pytest.approx((1.025, 1.975))


def test_power_of_the_two_proportion_test_at_fifty_vs_sixty_percent():
    # Fleiss' sample size without continuity correction for 50 % vs 60 %, α = 0.05, power 0.8: 387.3 → 388.
    assert stats.two_proportion_sample_size(0.5, 0.6) == 388
    assert stats.two_proportion_power(388, 0.5, 0.6) == pytest.approx(0.80, abs=0.005)
    assert stats.two_proportion_power(24, 0.5, 0.6) < 0.2


@pytest.mark.parametrize("n", [24, 100, 388])
def test_power_is_close_to_the_exact_binomial_power_of_the_pooled_z_test(n):
    # Exact: sum the binomial probabilities of every outcome (k1, k2) the pooled z-test rejects.
    k = np.arange(n + 1)
    k1, k2 = np.meshgrid(k, k, indexing="ij")
    pooled = (k1 + k2) / (2 * n)
    variance = pooled * (1 - pooled) * 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(variance > 0, (k2 - k1) / n / np.sqrt(variance), 0.0)
    reject = np.abs(z) > scipy_stats.norm.ppf(0.975)
    exact = float((np.outer(scipy_stats.binom.pmf(k, n, 0.5), scipy_stats.binom.pmf(k, n, 0.6)) * reject).sum())
    assert stats.two_proportion_power(n, 0.5, 0.6) == pytest.approx(exact, abs=0.02)
