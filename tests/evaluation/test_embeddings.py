"""Real vs simulated sessions in embedding space: the classifier two-sample test is at chance on
one distribution and near 100 % on two apart, with an interval around it; the t-SNE layout keeps
clusters apart and is the same for a seed; with the embedding model installed the evaluate stage
draws the picture and tests each simulator, and without it says how to install it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dial import paths
from dial.evaluation import embeddings, report, run
from dial.params import Params

N_REAL, N_SIMULATED = 40, 120  # the simulators' ~3x more sessions than the real users


def gaussian_samples(shift: float, seed: int = 0, dimensions: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(real, simulated) vectors; the simulated ones moved by `shift` along every dimension."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_REAL, dimensions)), rng.normal(size=(N_SIMULATED, dimensions)) + shift


def two_sample_test(real, simulated, seed: int = 0) -> dict:
    return embeddings.classifier_two_sample_test(real, simulated, seed=seed, n_resamples=1000, name="sft")


def assert_interval_holds_the_estimate(result: dict) -> None:
    low, high = result["c2st_balanced_accuracy_ci_low"], result["c2st_balanced_accuracy_ci_high"]
    assert low <= result["c2st_balanced_accuracy"] <= high and high - low > 0


def test_two_samples_of_one_distribution_are_at_chance_despite_unequal_sizes():
    result = two_sample_test(*gaussian_samples(shift=0.0))
    # "Always simulated" would score 75 % plain accuracy here; the balanced accuracy stays near 50 %.
    assert abs(result["c2st_balanced_accuracy"] - 0.5) < 0.15
    assert result["c2st_balanced_accuracy_ci_low"] < 0.5 < result["c2st_balanced_accuracy_ci_high"]
    assert (result["n_real"], result["n_simulated"], result["n_folds"]) == (N_REAL, N_SIMULATED, embeddings.C2ST_FOLDS)
    assert_interval_holds_the_estimate(result)


def test_two_well_separated_samples_are_told_apart():
    result = two_sample_test(*gaussian_samples(shift=3.0))
    assert result["c2st_balanced_accuracy"] >= 0.97
    assert result["c2st_balanced_accuracy_ci_low"] > 0.9
    assert result["c2st_balanced_accuracy_ci_low"] <= result["c2st_balanced_accuracy"] <= result["c2st_balanced_accuracy_ci_high"]


def test_a_moderate_difference_lies_between_chance_and_certainty():
    result = two_sample_test(*gaussian_samples(shift=0.3))
    assert 0.6 < result["c2st_balanced_accuracy"] < 0.97
    assert result["c2st_balanced_accuracy_ci_low"] > 0.5
    assert_interval_holds_the_estimate(result)


def test_two_sample_test_is_deterministic_for_a_seed_and_needs_two_sessions_a_class():
    real, simulated = gaussian_samples(shift=0.3)
    assert two_sample_test(real, simulated, seed=4) == two_sample_test(real, simulated, seed=4)
    assert two_sample_test(real[:1], simulated) is None
    few = two_sample_test(real[:3], simulated)
    assert (few["n_real"], few["n_folds"]) == (3, 3)  # as many folds as the smaller class allows


def test_permutation_p_value_is_small_only_when_the_samples_differ():
    # Fewer sessions than the other tests: each permutation reruns the whole cross-validation.
    rng = np.random.default_rng(0)
    same = embeddings.classifier_two_sample_test(rng.normal(size=(12, 8)), rng.normal(size=(36, 8)),
                                                 seed=0, n_resamples=200, name="sft", n_permutations=99)
    apart = embeddings.classifier_two_sample_test(rng.normal(size=(12, 8)), rng.normal(size=(36, 8)) + 2.0,
                                                  seed=0, n_resamples=200, name="sft", n_permutations=99)
    assert same["n_permutations"] == apart["n_permutations"] == 99
    assert same["c2st_p_value"] > 0.05
    assert apart["c2st_p_value"] == pytest.approx(1 / 100)  # no relabelling scores as high: the smallest p
    again = embeddings.classifier_two_sample_test(rng.normal(size=(2, 8)), rng.normal(size=(3, 8)),
                                                  seed=0, n_resamples=200, name="sft", n_permutations=0)
    assert "c2st_p_value" not in again


def test_permutation_p_value_counts_the_relabellings_at_least_as_good():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(20, 4))
    is_real = np.arange(20) < 8
    predicted = embeddings.held_out_predictions(vectors, is_real, 4, seed=0)
    observed = embeddings.balanced_accuracy(predicted, is_real)
    p = embeddings.permutation_p_value(vectors, is_real, observed, n_folds=4, seed=0, n_permutations=30,
                                       rng=np.random.default_rng(9))
    # The same count by hand, with the same stream of relabellings.
    replay = np.random.default_rng(9)
    permuted = [replay.permutation(is_real) for _ in range(30)]
    scores = [embeddings.balanced_accuracy(embeddings.held_out_predictions(vectors, labels, 4, seed=0), labels) for labels in permuted]
    assert p == (1 + sum(score >= observed for score in scores)) / 31
    assert 1 / 31 <= p <= 1


def clusters(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 8, [6.0] * 8, [-6.0] + [0.0] * 7])
    points = np.concatenate([centre + rng.normal(0, 0.5, size=(n, 8)) for centre in centres])
    return points, np.repeat(np.arange(3), n)


def test_tsne_layout_keeps_neighbours_in_their_cluster_and_is_the_same_for_a_seed():
    points, labels = clusters()
    layout = embeddings.tsne_layout(points, perplexity=30, seed=0)  # capped at (60 - 1) / 3
    assert layout.shape == (60, 2) and np.isfinite(layout).all()
    distances = np.linalg.norm(layout[:, None] - layout[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).mean() >= 0.95
    assert np.array_equal(layout, embeddings.tsne_layout(points, perplexity=30, seed=0))
    assert embeddings.tsne_layout(points[:2], perplexity=30, seed=0).shape == (2, 2)


def test_sample_sessions_is_seeded_and_order_independent():
    ids = [f"s{i}" for i in range(10)]
    assert embeddings.sample_sessions(ids, 4, 0) == embeddings.sample_sessions(list(reversed(ids)), 4, 0)
    assert len(embeddings.sample_sessions(ids, 40, 0)) == 10


def metrics_with_a_test(result: dict | None) -> dict:
    groups = {"real": {"n_sessions": 12}, "sft": {"n_sessions": 36}}
    if result is not None:
        groups["sft"]["embeddings"] = result
    return {"order": ["real", "sft"], "groups": groups, "settings": {"tsne": "on: 48 sessions", "decimals": 6}}


def test_report_shows_the_test_beside_the_picture_and_metrics_keep_its_keys():
    result = {"c2st_balanced_accuracy": 0.625, "c2st_balanced_accuracy_ci_low": 0.5, "c2st_balanced_accuracy_ci_high": 0.75,
              "n_real": 12, "n_simulated": 36, "n_folds": 5, "c2st_p_value": 0.0396, "n_permutations": 100}
    metrics = metrics_with_a_test(result)
    lines = report._embedding_lines(metrics, {"tsne": "figures/tsne.png"})
    assert "![t-SNE of session embeddings](figures/tsne.png)" in lines
    assert "| sft | 62.50% [50.00%, 75.00%] | 0.0396 | 12 | 36 |" in "\n".join(lines)
    flat = report.flat_metrics(metrics)
    assert (flat["sft.embeddings.c2st_balanced_accuracy"], flat["sft.embeddings.c2st_balanced_accuracy_ci_low"],
            flat["sft.embeddings.n_real"], flat["sft.embeddings.n_simulated"]) == (0.625, 0.5, 12, 36)
    assert report._embedding_lines(metrics_with_a_test(None), {}) == []


def user_messages(session_texts: dict[str, list[str]]) -> pd.DataFrame:
    rows = [
        {"session_id": session_id, "turn_index": 2 * turn + offset, "role": role, "text": text if role == "user" else "I see."}
        for session_id, texts in session_texts.items()
        for turn, text in enumerate(texts)
        for offset, role in enumerate(("user", "assistant"))
    ]
    return pd.DataFrame(rows)


SAD = ["I have felt so low and tired all week", "nothing seems worth doing and I cry at night",
       "my sister says I should talk to someone", "I can't sleep and I keep worrying", "work feels pointless lately",
       "I miss my friends, I have been hiding from everyone"]
STOCKS = ["the stock market fell three percent today", "should I buy more index funds now",
          "bond yields went up after the central bank meeting", "my portfolio is mostly tech shares",
          "what is a good price to earnings ratio", "the quarterly earnings report beat expectations"]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-model")


def test_evaluate_skips_the_picture_and_the_test_with_the_install_hint_without_the_model(monkeypatch):
    monkeypatch.setattr(embeddings, "embedding_model_dir", lambda cache_dir: None)
    status, png, tests = run.embedding_comparison(Params(), user_messages({"r": SAD[:2]}), {})
    assert status.startswith("skipped") and embeddings.INSTALL_HINT in status
    assert (png, tests) == (None, {})


def test_evaluate_draws_the_picture_and_tests_each_simulator_with_the_real_model(monkeypatch, model_cache):
    if embeddings.embedding_model_dir(model_cache) is None:
        pytest.skip(f"offline embedding package not installed ({embeddings.INSTALL_HINT}; scripts/setup.sh installs it)")
    monkeypatch.setattr(paths, "EMBEDDING_MODEL_CACHE", model_cache)
    real = user_messages({f"real-{i}": [SAD[i], SAD[(i + 1) % 6]] for i in range(6)})
    alike = user_messages({f"alike-{i}": [SAD[(i + 2) % 6], SAD[(i + 3) % 6]] for i in range(6)})
    apart = user_messages({f"apart-{i}": [STOCKS[i], STOCKS[(i + 1) % 6]] for i in range(6)})
    simulated = {"sft": (None, alike, None), "it1": (None, apart, None)}
    status, png, tests = run.embedding_comparison(Params(), real, simulated)
    assert status == "on: 18 sessions"
    assert png.startswith(b"\x89PNG")
    assert (tests["it1"]["n_real"], tests["it1"]["n_simulated"]) == (6, 6)
    assert tests["it1"]["c2st_balanced_accuracy"] == 1.0  # money talk is told from sadness every time
    assert tests["sft"]["c2st_balanced_accuracy"] < tests["it1"]["c2st_balanced_accuracy"]
    assert run.embedding_comparison(Params(), real, simulated) == (status, png, tests)  # same picture, same bytes


def test_embedding_model_when_installed(model_cache):
    model_dir = embeddings.embedding_model_dir(model_cache)
    if model_dir is None:
        pytest.skip(f"offline embedding package not installed ({embeddings.INSTALL_HINT})")
    vectors = embeddings.embed_texts(model_dir, ["I feel so tired today", "I am exhausted today", "the stock market fell"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
