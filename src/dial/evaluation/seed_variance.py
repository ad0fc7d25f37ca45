"""Run-to-run spread of a chatbot's issue rate (issue #14 item 5): how much the rate moves when the
same contexts are simulated again with other seeds, so that a difference between two chatbots can
be read against it.

With `simulate.n_simulations = k > 1` every (context, chatbot) is simulated k times, with
`simulation_index` 0..k-1 and a different seed each (`dial.simulation.simulate.plan_sessions`).
Run j is every context's j-th simulation: the sessions one simulation of the whole set of contexts
would have given. Per chatbot:

    runs.<j>   the issue rate of run j, Σ flagged / Σ chatbot messages over its sessions (k, n)
    mean, min, max, std
               over the k run rates (std: sample standard deviation, ddof 1)
    std_ci_low, std_ci_high
               95 % percentile bootstrap of the std over contexts: a resample draws contexts, each
               with its k simulations, and recomputes every run's rate and their std (the runs
               of one context stay paired)
    n_runs, n_contexts, n_sessions

With k = 1 there is no run-to-run spread to measure, and none is invented: the entry says so
(`applicable` False, `why`). The pooled rate over all runs, with its interval over sessions, is the
chatbot's usual issue rate (`issues.per_chatbot`).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from dial.evaluation import stats

ONE_RUN = "one simulation per context: no run-to-run spread"


def rate_spread(
    session_ids: Sequence[str],
    flagged: np.ndarray,
    messages: np.ndarray,
    run_of: Mapping[str, int],
    context_of: Mapping[str, str],
    n_resamples: int,
    seed: int,
    label: str,
) -> dict:
    """The spread across runs of Σ flagged / Σ messages over one chatbot's sessions (module
    docstring). `flagged` and `messages` are per session, in `session_ids` order; `run_of` gives
    each session's simulation_index, `context_of` the real session that grounds it."""
    flagged, messages = np.asarray(flagged, dtype=np.float64), np.asarray(messages, dtype=np.float64)
    runs = sorted({int(run_of[sid]) for sid in session_ids})
    contexts = sorted({str(context_of[sid]) for sid in session_ids})
    base = {"n_runs": len(runs), "n_contexts": len(contexts), "n_sessions": len(session_ids)}
    if len(runs) < 2:
        return {**base, "applicable": False, "why": ONE_RUN}
    row_of, column_of = {c: i for i, c in enumerate(contexts)}, {r: j for j, r in enumerate(runs)}
    k = np.zeros((len(contexts), len(runs)))
    n = np.zeros((len(contexts), len(runs)))
    for sid, k_session, n_session in zip(session_ids, flagged, messages):
        i, j = row_of[str(context_of[sid])], column_of[int(run_of[sid])]
        k[i, j] += k_session
        n[i, j] += n_session
    totals_k, totals_n = k.sum(axis=0), n.sum(axis=0)
    rates = np.where(totals_n > 0, totals_k / np.where(totals_n > 0, totals_n, 1.0), np.nan)
    result = {
        **base,
        "applicable": True,
        "runs": {
            str(run): {"rate": float(rates[j]) if totals_n[j] else None, "k": int(totals_k[j]), "n": int(totals_n[j])}
            for j, run in enumerate(runs)
        },
    }
    defined = rates[np.isfinite(rates)]
    if len(defined) < 2:
        return {**result, "applicable": False, "why": f"fewer than 2 runs with a judged chatbot message ({len(defined)})"}
    weights = stats.resample_weights(len(contexts), n_resamples, stats.stable_rng(seed, "run_spread", label))
    top, bottom = weights @ k, weights @ n  # (resamples × runs)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with fewer than 2 defined runs: NaN, left out
        replicate_rates = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)
        replicate_std = np.nanstd(replicate_rates, axis=1, ddof=1)  # NaN where fewer than 2 runs are defined
    interval = stats.percentile_interval(replicate_std)
    return {
        **result,
        "mean": float(defined.mean()),
        "min": float(defined.min()),
        "max": float(defined.max()),
        "std": float(defined.std(ddof=1)),
        "std_ci_low": interval[0] if interval else None,
        "std_ci_high": interval[1] if interval else None,
    }


def per_chatbot_spread(
    session_ids: Sequence[str],
    flagged: np.ndarray,
    messages: np.ndarray,
    chatbots: np.ndarray,
    run_of: Mapping[str, int],
    context_of: Mapping[str, str],
    n_resamples: int,
    seed: int,
    label: str,
) -> dict:
    """`rate_spread` of each chatbot's sessions (sessions without a chatbot id are left out)."""
    chatbots = np.asarray(chatbots, dtype=object)
    result = {}
    for chatbot in sorted({str(c) for c in chatbots if c}):
        mask = chatbots == chatbot
        ids = [sid for sid, keep in zip(session_ids, mask) if keep]
        result[chatbot] = rate_spread(ids, np.asarray(flagged)[mask], np.asarray(messages)[mask], run_of, context_of,
                                      n_resamples, seed, f"{label}:{chatbot}")
    return result
