"""95 % intervals of the evaluation metrics, and each simulator compared with the baseline with
the interval of the difference (METHOD.md §6; issue #11). The formulas are in `stats`.

Key convention (metrics.json)
    A metric at key `<name>` gets its interval as the siblings `<name>_ci_low` and `<name>_ci_high`
    in the same object (`it1.issues.rate` → `it1.issues.rate_ci_low`, `it1.issues.rate_ci_high`;
    `sft.discriminator.overall.accuracy` → `…accuracy_ci_low`). A map of metrics `<name>` (rates per
    action) gets the maps `<name>_ci_low` and `<name>_ci_high` beside it, with the same keys. The n
    an interval rests on is the count already in that object (`n`, `n_sessions`,
    `n_user_messages`, …). A metric without an interval has no such siblings (listed below).

Which interval
    * Wilson (`stats.wilson_interval`): the discriminator's accuracy, per turn and overall, over
      its n held-out user messages (the only counts its report gives; messages of one session are
      not independent, so the interval is somewhat too narrow).
    * Percentile bootstrap over sessions (`stats.resample_weights`, `evaluate.bootstrap_samples`
      resamples, seeded by `evaluate.seed` and the group's name, so a group's draws do not depend on
      the other groups): lexical means; per-message rates clustered by session (issue rate, its
      per-chatbot rates, user-action rates, intent decomposition); KL and BCE (the real and the
      simulated sessions both resampled); termination precision / recall / F1 (clustered by the
      real session probed); the simulator-error message rate and the issue rate without the
      sessions with a simulator error (`clustered_rate`; the latter on the same draws as the
      usual issue rate); the `aggregate` row's issue rates and KL, over the pooled sessions; the
      embedding two-sample test's balanced accuracy (`<simulator>.embeddings`, each class resampled
      on its own, given the fitted classifiers: `dial.evaluation.embeddings`).
    * Wilson over sessions: the share of sessions with a simulator error (sessions are independent).
    * Percentile bootstrap over sessions, computed where the metric is (`goals.summarise`,
      `seed_variance.rate_spread`): goal alignment (`<group>.goals.rate`, the mean of per-session
      shares; per category clustered by session, n = `n` sub-components); the std of a chatbot's
      issue rate across runs (`<simulator>.issues.run_spread.<chatbot>.std`, resampling contexts
      with all their runs; n = `n_runs`, `n_contexts`). Its min, max and mean have no interval.
    * None: first-turn diversity (a share of distinct words, not a mean over sessions: a resample
      repeats sessions and so deflates it; its n is `n_first_turns`), the discriminator's F1 and MCC
      (no confusion counts in its report), medians and standard deviations, category shares,
      predictive validity and A/B replication (they carry their own p).

Comparison with the baseline (`vs_baseline`, the verdict of the report)
    For each simulator after the baseline (sft, else the first simulator) and each verdict metric:
    the baseline's and the simulator's distance to the target (|value − real| for metrics where the
    real users are the target, |accuracy − 0.5| for the discriminator, the value itself for KL and
    BCE, F1 for termination, where higher is better), their difference (simulator − baseline) and
    the percentile interval of the difference from the same resamples (the real users' resample is
    shared by both distances). `significant` = the interval excludes 0; `improved` = the difference
    points the better way. With n per side. Keys: `<simulator>.vs_baseline.<metric>.difference`,
    `…difference_ci_low`, `…difference_ci_high`, `…n`, `…n_baseline`, `…n_real`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from dial.evaluation import lexical, stats

BASELINE = "sft"
REAL = "real"


@dataclass
class GroupSample:
    """Per-session inputs of one group's metrics, in `session_ids` order (sorted)."""

    session_ids: list[str]
    lexical: pd.DataFrame  # lexical.per_session rows, same order
    intent_sums: np.ndarray  # Σ overlap over the session's user messages with content words
    intent_counts: np.ndarray  # those messages
    issue_k: np.ndarray | None = None  # flagged chatbot messages (judged sessions; 0 otherwise)
    issue_n: np.ndarray | None = None  # chatbot messages of judged sessions
    chatbots: np.ndarray | None = None  # chatbot id per session
    issue_pairs: pd.DataFrame | None = None  # session_id, category of each flagged (message, category)
    action_n: np.ndarray | None = None  # user messages of judged sessions
    action_found: pd.DataFrame | None = None  # session_id, action of each (message, action)
    termination: pd.DataFrame | None = None  # scored termination positions
    discriminator: tuple[float, int] | None = None  # overall accuracy and its n
    replicates: dict = field(default_factory=dict)


def _counts_matrix(session_ids: Sequence[str], found: pd.DataFrame | None, column: str, keys: Sequence[str]) -> np.ndarray:
    """(sessions × keys) counts of `found[column]` per session."""
    matrix = np.zeros((len(session_ids), len(keys)), dtype=np.float64)
    if found is None or not len(found) or not keys:
        return matrix
    row_of = {sid: i for i, sid in enumerate(session_ids)}
    col_of = {key: j for j, key in enumerate(keys)}
    for sid, key in zip(found["session_id"].astype(str), found[column].astype(str)):
        matrix[row_of[sid], col_of[key]] += 1.0
    return matrix


def _set_interval(target: dict, name: str, interval: tuple[float, float] | None) -> None:
    if interval is not None:
        target[f"{name}_ci_low"], target[f"{name}_ci_high"] = interval


def _wilson(target: dict, name: str, n_key: str = "n") -> None:
    """The Wilson interval of a rate over target[n_key] trials, or over the effective sample size
    `n_effective` when the rate is weighted (a discriminator's paired metrics)."""
    value, n = target.get(name), target.get("n_effective") or target.get(n_key)
    if value is None or not n or f"{name}_ci_low" in target:  # an interval the report already gives
        return
    if "n_effective" in target:
        _set_interval(target, name, stats.wilson_interval(value * n, n))
        return
    k = int(round(value * n))
    _set_interval(target, name, stats.wilson_interval(k, int(n)))


def _termination_counts(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per probed session: true positives, predicted ends and real ends."""
    frame = pd.DataFrame({
        "session_id": predictions["session_id"].astype(str),
        "tp": (predictions["is_end"].astype(bool) & predictions["predicted_end"].astype(bool)).astype(float),
        "predicted": predictions["predicted_end"].astype(bool).astype(float),
        "real": predictions["is_end"].astype(bool).astype(float),
    })
    return frame.groupby("session_id", sort=True)[["tp", "predicted", "real"]].sum()


def add_intervals(
    groups: dict,
    samples: Mapping[str, GroupSample],
    categories: Sequence[str] | None,
    group_of: Mapping[str, str] | None,
    n_resamples: int,
    seed: int,
    kl_smoothing: float,
    bce_eps: float,
) -> None:
    """Write the `_ci_low` / `_ci_high` siblings into `groups` (module docstring) and keep each
    group's bootstrap replicates in its sample for `compare_with_baseline`."""
    for name, sample in samples.items():
        group, out = groups[name], sample.replicates
        weights = stats.resample_weights(len(sample.session_ids), n_resamples, stats.stable_rng(seed, name))

        for metric in lexical.METRICS:
            values = sample.lexical[metric].to_numpy(dtype=np.float64)
            defined = np.isfinite(values)
            out[metric] = stats.ratio_replicates(weights, np.where(defined, values, 0.0), defined.astype(float))
            _set_interval(group["lexical"], f"{metric}_mean", stats.percentile_interval(out[metric]))

        out["intent_decomposition"] = stats.ratio_replicates(weights, sample.intent_sums, sample.intent_counts)
        if group["intent_decomposition"]["value"] is not None:
            _set_interval(group["intent_decomposition"], "value", stats.percentile_interval(out["intent_decomposition"]))

        issues = group.get("issues")
        if issues is not None and sample.issue_k is not None:
            add_issue_intervals(issues, sample, weights, categories)

        actions = group.get("actions")
        if actions is not None and sample.action_n is not None and group_of:
            names = sorted(group_of)
            counts = weights @ _counts_matrix(sample.session_ids, sample.action_found, "action", names)
            n_user = weights @ sample.action_n
            with np.errstate(invalid="ignore", divide="ignore"):
                out["action_rates"] = np.where(n_user[:, None] > 0, counts / np.where(n_user > 0, n_user, 1.0)[:, None], np.nan)
            if actions["n_user_messages"]:
                lows, highs = {}, {}
                for j, action in enumerate(names):
                    if action not in actions["rates"]:
                        continue
                    interval = stats.percentile_interval(out["action_rates"][:, j])
                    if interval is not None:
                        lows[action], highs[action] = interval
                actions["rates_ci_low"], actions["rates_ci_high"] = lows, highs

        if sample.termination is not None and group.get("termination"):
            per_session = _termination_counts(sample.termination)
            t_weights = stats.resample_weights(len(per_session), n_resamples, stats.stable_rng(seed, name, "termination"))
            tp, predicted, real = (per_session[c].to_numpy() for c in ("tp", "predicted", "real"))
            out["termination_precision"] = stats.ratio_replicates(t_weights, tp, predicted)
            out["termination_recall"] = stats.ratio_replicates(t_weights, tp, real)
            out["termination_f1"] = stats.ratio_replicates(t_weights, 2 * tp, predicted + real)
            for metric in ("precision", "recall", "f1"):
                if group["termination"][metric] is not None:
                    _set_interval(group["termination"], metric, stats.percentile_interval(out[f"termination_{metric}"]))

        discriminator = group.get("discriminator")
        if discriminator:
            for entry in discriminator.values():
                if isinstance(entry, dict) and "accuracy" in entry and "n" in entry:
                    _wilson(entry, "accuracy")
            overall = discriminator.get("overall") or {}
            if overall.get("accuracy") is not None and overall.get("n"):
                # Weighted (paired) metrics: the effective sample size, rounded, is the binomial n.
                n = max(1, int(round(overall.get("n_effective") or overall["n"])))
                # The replicates of the verdict: binomial draws, the model behind the Wilson interval.
                rng = stats.stable_rng(seed, name, "discriminator")
                out["discriminator_accuracy"] = rng.binomial(n, overall["accuracy"], n_resamples) / n

    _add_divergence_intervals(groups, samples, categories, group_of, kl_smoothing, bce_eps)


def add_issue_intervals(issues: dict, sample: GroupSample, weights: np.ndarray, categories: Sequence[str] | None) -> None:
    """The issue rate's and each chatbot's rate's interval (bootstrap over the sessions drawn in
    `weights`), and the replicates of the rate and of the category counts (for KL) in `sample`."""
    out = sample.replicates
    out["issue_rate"] = stats.ratio_replicates(weights, sample.issue_k, sample.issue_n)
    if issues["rate"] is not None:
        _set_interval(issues, "rate", stats.percentile_interval(out["issue_rate"]))
    for chatbot, rate in issues["per_chatbot"].items():
        mask = (sample.chatbots == chatbot).astype(float)
        replicates = stats.ratio_replicates(weights, sample.issue_k * mask, sample.issue_n * mask)
        if rate["rate"] is not None:
            _set_interval(rate, "rate", stats.percentile_interval(replicates))
    out["category_counts"] = weights @ _counts_matrix(sample.session_ids, sample.issue_pairs, "category", categories or [])


def add_kl_interval(issues: dict, sample: GroupSample, real: GroupSample, kl_smoothing: float) -> None:
    """KL(real ‖ sim)'s interval: real resample b against the simulator's resample b."""
    if "category_counts" not in sample.replicates or "category_counts" not in real.replicates:
        return
    sample.replicates["issue_kl"] = kl_replicates(real.replicates["category_counts"], sample.replicates["category_counts"], kl_smoothing)
    if issues.get("kl_from_real") is not None:
        _set_interval(issues, "kl_from_real", stats.percentile_interval(sample.replicates["issue_kl"]))


def clustered_rate(k: np.ndarray, n: np.ndarray, weights: np.ndarray) -> dict:
    """Σk / Σn over sessions (a per-message rate: k of a session's n messages) with its 95 %
    percentile bootstrap interval over the sessions drawn in `weights`; rate and interval None
    when there is no message."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    total_k, total_n = int(k.sum()), int(n.sum())
    interval = stats.percentile_interval(stats.ratio_replicates(weights, k, n)) if total_n else None
    return {
        "rate": total_k / total_n if total_n else None,
        "rate_ci_low": interval[0] if interval else None,
        "rate_ci_high": interval[1] if interval else None,
        "k": total_k,
        "n": total_n,
    }


def _add_divergence_intervals(groups, samples, categories, group_of, kl_smoothing: float, bce_eps: float) -> None:
    """KL(real ‖ sim) and BCE(real, sim) per resample pair (real resample b, simulator resample b)."""
    real = samples.get(REAL)
    if real is None:
        return
    for name, sample in samples.items():
        if name == REAL:
            continue
        issues = groups[name].get("issues")
        if issues is not None and categories:
            add_kl_interval(issues, sample, real, kl_smoothing)
        bce = (groups[name].get("actions") or {}).get("bce")
        if bce and "action_rates" in sample.replicates and "action_rates" in real.replicates:
            names = sorted(group_of)
            losses = stats.bce(real.replicates["action_rates"], sample.replicates["action_rates"], bce_eps)
            sample.replicates["actions_bce"] = losses.mean(axis=1)  # NaN rows (no user message) stay NaN
            _set_interval(bce, "total", stats.percentile_interval(sample.replicates["actions_bce"]))
            for action_group, entry in bce["groups"].items():
                members = [j for j, a in enumerate(names) if group_of[a] == action_group]
                _set_interval(entry, "bce", stats.percentile_interval(losses[:, members].mean(axis=1)))


def kl_replicates(real_counts: np.ndarray, sim_counts: np.ndarray, smoothing: float) -> np.ndarray:
    """KL(real ‖ sim) of each row pair of (resamples × categories) counts, smoothed as
    `stats.kl_divergence` (NaN where the real row has no count, or where it is infinite)."""
    k = real_counts.shape[1]
    p_total = real_counts.sum(axis=1, keepdims=True)
    p = (real_counts + smoothing / k) / (p_total + smoothing)
    q = (sim_counts + smoothing / k) / (sim_counts.sum(axis=1, keepdims=True) + smoothing)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
        values = terms.sum(axis=1)
    values[(p_total[:, 0] <= 0) | ~np.isfinite(values)] = np.nan
    return values


def discriminator_balanced_accuracy(scores: pd.DataFrame, n_resamples: int, seed: int, name: str) -> tuple[dict, np.ndarray] | None:
    """Balanced accuracy of a discriminator on its held-out messages (`valid_scores.csv`: session_id,
    is_real, status, logit; predicted real iff logit >= 0, as its accuracy): the mean of its
    accuracy on real and on simulated messages. A constant guess scores 0.5 whatever the class
    sizes, which plain accuracy does not: a simulator that writes fewer messages than the real
    users lets "always real" score above 0.5. Interval: bootstrap over sessions, each class
    resampled on its own. Returns (values, replicates), or None without both classes."""
    scored = scores[(scores["status"] == "scored") & scores["logit"].notna()]
    if scored.empty:
        return None
    correct = (scored["logit"].to_numpy() >= 0) == scored["is_real"].astype(bool).to_numpy()
    per_session = (
        scored.assign(correct=correct.astype(float), n=1.0).groupby(["is_real", "session_id"], sort=True)[["correct", "n"]].sum()
    )
    recalls, replicates = [], []
    for label in (True, False):
        if label not in per_session.index.get_level_values("is_real"):
            return None
        sessions = per_session.xs(label, level="is_real")
        recalls.append(float(sessions["correct"].sum() / sessions["n"].sum()))
        weights = stats.resample_weights(len(sessions), n_resamples, stats.stable_rng(seed, name, "balanced", str(label)))
        replicates.append(stats.ratio_replicates(weights, sessions["correct"].to_numpy(), sessions["n"].to_numpy()))
    draws = (replicates[0] + replicates[1]) / 2
    values = {
        "balanced_accuracy": round((recalls[0] + recalls[1]) / 2, 6),
        "accuracy_real": round(recalls[0], 6),
        "accuracy_simulated": round(recalls[1], 6),
    }
    _set_interval(values, "balanced_accuracy", stats.percentile_interval(draws))
    return values, draws


# --------------------------------------------------------------------------------------------
# Comparison with the baseline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictMetric:
    key: str  # under vs_baseline
    label: str  # in the report
    better: str  # "lower" or "higher"
    value: Callable[[dict], float | None]  # the group's value (from its metrics)
    replicate: str | None  # the GroupSample.replicates key; None = no interval
    target: str  # "real": distance to the real users' value; "half": distance to 0.5; "none": the value itself
    n: Callable[[dict], int | None]
    unit: str


def _path(*keys):
    def get(group: dict):
        value = group
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return get


VERDICT_METRICS = (
    VerdictMetric("discriminator_accuracy", "discriminator accuracy overall: distance to 50%", "lower",
                  _path("discriminator", "overall", "accuracy"), "discriminator_accuracy", "half",
                  _path("discriminator", "overall", "n"), "messages"),
    VerdictMetric("discriminator_balanced_accuracy", "discriminator balanced accuracy: distance to 50%", "lower",
                  _path("discriminator", "overall", "balanced_accuracy"), "discriminator_balanced_accuracy", "half",
                  _path("discriminator", "overall", "n"), "messages"),
    *(
        VerdictMetric(metric, f"{metric.replace('_', ' ').replace('type token', 'type-token')}: distance to real", "lower",
                      _path("lexical", f"{metric}_mean"), metric, "real", _path("lexical", "n_sessions"), "sessions")
        for metric in lexical.METRICS
    ),
    VerdictMetric("first_turn_diversity", "first-turn diversity: distance to real", "lower",
                  _path("first_turn_diversity", "value"), None, "real", _path("first_turn_diversity", "n_first_turns"), "first turns"),
    VerdictMetric("intent_decomposition", "intent decomposition: distance to real", "lower",
                  _path("intent_decomposition", "value"), "intent_decomposition", "real",
                  _path("intent_decomposition", "n_sessions"), "sessions"),
    VerdictMetric("issue_rate", "issue rate: distance to real", "lower", _path("issues", "rate"), "issue_rate", "real",
                  _path("issues", "n_sessions_judged"), "judged sessions"),
    VerdictMetric("issue_kl", "issue categories KL(real‖sim)", "lower", _path("issues", "kl_from_real"), "issue_kl", "none",
                  _path("issues", "n_sessions_judged"), "judged sessions"),
    VerdictMetric("actions_bce", "user actions BCE (total)", "lower", _path("actions", "bce", "total"), "actions_bce", "none",
                  _path("actions", "n_sessions_judged"), "judged sessions"),
    VerdictMetric("termination_f1", "termination F1", "higher", _path("termination", "f1"), "termination_f1", "none",
                  _path("termination", "n_sessions"), "probed real sessions"),
)


def baseline_of(simulators: Sequence[str]) -> str | None:
    """sft when evaluated, else the first simulator."""
    if not simulators:
        return None
    return BASELINE if BASELINE in simulators else simulators[0]


def _distance(metric: VerdictMetric, value, real_value):
    if value is None:
        return None
    if metric.target == "half":
        return abs(value - 0.5)
    if metric.target == "real":
        return None if real_value is None else abs(value - real_value)
    return value


def compare_with_baseline(groups: dict, samples: Mapping[str, GroupSample], order: Sequence[str]) -> None:
    """groups[simulator]["vs_baseline"] for every simulator after the baseline (module docstring)."""
    simulators = [name for name in order if name != REAL]
    baseline = baseline_of(simulators)
    if baseline is None:
        return
    real_group, real_sample = groups.get(REAL, {}), samples.get(REAL)
    for name in simulators[simulators.index(baseline) + 1 :]:
        rows = {}
        for metric in VERDICT_METRICS:
            real_value = metric.value(real_group) if metric.target == "real" else None
            base = _distance(metric, metric.value(groups[baseline]), real_value)
            ours = _distance(metric, metric.value(groups[name]), real_value)
            row = {
                "better": metric.better,
                "unit": metric.unit,
                "baseline_distance": base,
                "distance": ours,
                "difference": None if base is None or ours is None else ours - base,
                "n": metric.n(groups[name]),
                "n_baseline": metric.n(groups[baseline]),
                "n_real": metric.n(real_group) if metric.target == "real" else None,
                "significant": None,
                "improved": None,
            }
            interval = _difference_interval(metric, samples.get(baseline), samples.get(name), real_sample)
            if row["difference"] is not None and interval is not None:
                row["difference_ci_low"], row["difference_ci_high"] = interval
                row["significant"] = bool(interval[0] > 0 or interval[1] < 0)
                row["improved"] = bool(row["difference"] < 0 if metric.better == "lower" else row["difference"] > 0)
            rows[metric.key] = row
        groups[name]["vs_baseline"] = {"baseline": baseline, **rows}


def _difference_interval(metric: VerdictMetric, baseline: GroupSample | None, ours: GroupSample | None, real: GroupSample | None):
    if metric.replicate is None or baseline is None or ours is None:
        return None
    base_b, ours_b = baseline.replicates.get(metric.replicate), ours.replicates.get(metric.replicate)
    if base_b is None or ours_b is None:
        return None
    if metric.target == "half":
        base_b, ours_b = np.abs(base_b - 0.5), np.abs(ours_b - 0.5)
    elif metric.target == "real":
        real_b = real.replicates.get(metric.replicate) if real is not None else None
        if real_b is None:
            return None
        base_b, ours_b = np.abs(base_b - real_b), np.abs(ours_b - real_b)
    return stats.percentile_interval(ours_b - base_b)
