"""The optional t-SNE picture: exact t-SNE separates clusters and preserves neighbours; the
embedding model is used when its package is installed and skipped with a message otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from dial.evaluation import embeddings


def clusters(seed: int = 0, n: int = 20):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 8, [6.0] * 8, [-6.0] + [0.0] * 7])
    points = np.concatenate([centre + rng.normal(0, 0.5, size=(n, 8)) for centre in centres])
    labels = np.repeat(np.arange(3), n)
    return points, labels


def test_tsne_separates_clusters_and_beats_a_random_layout():
    points, labels = clusters()
    layout = embeddings.tsne(points, perplexity=10, seed=0, n_iter=400)
    assert layout.shape == (60, 2) and np.isfinite(layout).all()
    centroids = np.array([layout[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(layout[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread
    # Nearest neighbour in the layout is in the same cluster for (almost) every point.
    distances = np.linalg.norm(layout[:, None] - layout[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).mean() >= 0.95
    random_layout = np.random.default_rng(1).normal(size=layout.shape)
    assert embeddings.kl_of_embedding(points, layout, 10) < 0.5 * embeddings.kl_of_embedding(points, random_layout, 10)


def test_tsne_is_deterministic_and_handles_tiny_inputs():
    points, _ = clusters(n=5)
    assert np.array_equal(embeddings.tsne(points, 5, seed=3, n_iter=100), embeddings.tsne(points, 5, seed=3, n_iter=100))
    assert embeddings.tsne(points[:2], 30).shape == (2, 2)


def test_affinities_match_the_perplexity():
    points, _ = clusters(n=10)
    squared = np.sum(points**2, axis=1)
    distances = squared[:, None] + squared[None, :] - 2 * points @ points.T
    conditional = embeddings._conditional_probabilities(np.maximum(distances, 0), perplexity=5)
    assert np.allclose(conditional.sum(axis=1), 1.0)
    entropy = -np.sum(np.where(conditional > 0, conditional * np.log(np.maximum(conditional, 1e-300)), 0), axis=1)
    assert np.allclose(np.exp(entropy), 5.0, rtol=1e-3)


def test_sample_sessions_is_seeded_and_order_independent():
    ids = [f"s{i}" for i in range(10)]
    assert embeddings.sample_sessions(ids, 4, 0) == embeddings.sample_sessions(list(reversed(ids)), 4, 0)
    assert len(embeddings.sample_sessions(ids, 40, 0)) == 10


def test_embedding_model_when_installed(tmp_path):
    model_dir = embeddings.embedding_model_dir(tmp_path)
    if model_dir is None:
        pytest.skip(f"offline embedding package not installed ({embeddings.INSTALL_HINT})")
    vectors = embeddings.embed_texts(model_dir, ["I feel so tired today", "I am exhausted today", "the stock market fell"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
