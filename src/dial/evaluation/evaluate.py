"""The evaluation of every simulator against the real users (METHOD.md §6–7; DIAL paper §4.3, §5).

`evaluate` gathers, for the real sessions and for each simulator's sessions (a *group* each):

* lexical diversity of the user messages (`lexical`; table 1);
* first-turn diversity and intent decomposition (`realism`; UserLM);
* issue rate with its standard error, per-category shares, KL(real ‖ sim) and per-chatbot rates
  (`stats`; figure 2, table 3, figure 4), from the issue judge's output;
* user-action rates and BCE(real, sim) per action group (table 4, figure 5), from the action judge;
* the discriminator's held-out accuracy / F1 / MCC (table 2), read from its report;
* dialogue-termination F1 when termination predictions are given;
* predictive validity (Pearson across chatbot configurations, table 3) and A/B replication
  (table 5) for the configured (control, treatment) chatbot pairs.

Judge output (the judges run elsewhere; nothing here calls a model or an API):
    `issues`        item_id, turn_index (of the chatbot message), group, category, evidence, judge
    `user_actions`  item_id, turn_index (of the user message), group, action, judge
    `item_sessions` item_id → session_id of every *judged* session (also those without any finding:
                    they are the denominators).
A session counts for the issue rate / action rates only if it was judged. Findings that point at a
message of the wrong role (or a missing one) are not counted and are reported per group
(`n_not_on_chatbot_message`, `n_not_on_user_message`); judged sessions that belong to no group are
reported under `judge.*`. Nothing is dropped silently.

Missing inputs (no judge output, no discriminator report for a group, no termination predictions)
leave that part None; the report shows "—".
"""

from __future__ import annotations

import json
import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dial.errors import DialError
from dial.evaluation import lexical, realism, stats
from dial.params import AbPair, DecodingParams, EvaluateParams, TerminationParams, TsneParams  # noqa: F401 (defined with the other params)

log = logging.getLogger(__name__)

REAL = "real"
ISSUE_COLUMNS = ("item_id", "turn_index", "category")
ACTION_COLUMNS = ("item_id", "turn_index", "group", "action")


def termination_decoding(simulate_decoding: DecodingParams, params: TerminationParams) -> DecodingParams:
    """The simulator's own sampling (as in simulation), with only a few new tokens."""
    return simulate_decoding.model_copy(update={"max_new_tokens": params.max_new_tokens})


# --------------------------------------------------------------------------------------------
# Judge output → per-group counts
# --------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DialError(f"evaluate: {what} frame lacks column(s) {missing}")
    if "judge" in frame.columns and frame["judge"].nunique() > 1:
        raise DialError(
            f"evaluate: {what} frame mixes judges {sorted(frame['judge'].astype(str).unique())}; pass one judge's output"
        )


def _with_sessions(frame: pd.DataFrame, item_sessions: Mapping[str, str], what: str) -> pd.DataFrame:
    items = frame["item_id"].astype(str)
    unknown = sorted(set(items) - set(item_sessions))
    if unknown:
        raise DialError(f"evaluate: {what} rows refer to item_id(s) missing from the item→session map: {unknown[:5]}")
    out = frame.copy()
    out["session_id"] = items.map(item_sessions)
    out["turn_index"] = out["turn_index"].astype("int64")
    return out


def _roles(messages: pd.DataFrame) -> dict[tuple[str, int], str]:
    return dict(zip(zip(messages["session_id"].astype(str), messages["turn_index"].astype(int)), messages["role"]))


def _issue_summary(
    sessions: pd.DataFrame, messages: pd.DataFrame, judged: set[str], issues: pd.DataFrame
) -> dict:
    """Issue rate (+ SE), category counts and per-chatbot counts over the judged sessions of a group."""
    chatbot_of = dict(zip(sessions["session_id"].astype(str), sessions["chatbot_id"]))
    judged = judged & set(chatbot_of)
    in_group = messages[messages["session_id"].astype(str).isin(judged)]
    chatbot_messages = in_group[in_group["role"] == "assistant"]
    role_of = _roles(in_group)
    found = issues[issues["session_id"].isin(judged)]
    on_chatbot = np.array([role_of.get((s, t)) == "assistant" for s, t in zip(found["session_id"], found["turn_index"])], dtype=bool)
    valid = found[on_chatbot] if len(found) else found
    pairs = valid.drop_duplicates(["session_id", "turn_index", "category"])
    flagged = valid.drop_duplicates(["session_id", "turn_index"])
    summary = stats.proportion(len(flagged), len(chatbot_messages))
    per_chatbot_n = chatbot_messages["session_id"].astype(str).map(chatbot_of).fillna("").value_counts()
    per_chatbot_k = flagged["session_id"].map(chatbot_of).fillna("").value_counts()
    per_chatbot = {
        str(c): stats.proportion(int(per_chatbot_k.get(c, 0)), int(n)) for c, n in sorted(per_chatbot_n.items()) if c
    }
    category_counts = {str(c): int(n) for c, n in sorted(pairs["category"].value_counts().items())}
    return {
        **summary,
        "n_sessions_judged": len(judged),
        "n_issue_rows": int(len(found)),
        "n_not_on_chatbot_message": int((~on_chatbot).sum()) if len(found) else 0,
        "n_flagged_pairs": int(len(pairs)),
        "category_counts": category_counts,
        "categories": {c: n / len(pairs) for c, n in category_counts.items()} if len(pairs) else {},
        "per_chatbot": per_chatbot,
    }


def _action_summary(messages: pd.DataFrame, judged: set[str], actions: pd.DataFrame) -> dict:
    in_group = messages[messages["session_id"].astype(str).isin(judged)]
    n_user = int((in_group["role"] == "user").sum())
    role_of = _roles(in_group)
    found = actions[actions["session_id"].isin(judged)]
    on_user = np.array([role_of.get((s, t)) == "user" for s, t in zip(found["session_id"], found["turn_index"])], dtype=bool)
    valid = (found[on_user] if len(found) else found).drop_duplicates(["session_id", "turn_index", "action"])
    counts = valid["action"].astype(str).value_counts()
    return {
        "n_sessions_judged": len(judged),
        "n_user_messages": n_user,
        "n_not_on_user_message": int((~on_user).sum()) if len(found) else 0,
        "counts": {a: int(n) for a, n in sorted(counts.items())},
        "rates": {a: int(n) / n_user for a, n in sorted(counts.items())} if n_user else {},
    }


def _action_groups(actions: pd.DataFrame | None, given: Mapping[str, str] | None) -> dict[str, str]:
    group_of = dict(given or {})
    if actions is not None and len(actions):
        for action, groups in actions.groupby(actions["action"].astype(str))["group"]:
            distinct = sorted(set(groups.astype(str)))
            if len(distinct) > 1 or (action in group_of and group_of[action] != distinct[0]):
                raise DialError(f"evaluate: user action {action!r} appears in several groups {distinct + [group_of.get(action)]}")
            group_of[action] = distinct[0]
    return dict(sorted(group_of.items()))


# --------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------


def _grounding(sessions: pd.DataFrame, simulations: pd.DataFrame | None, name: str) -> dict[str, str]:
    ids = sessions["session_id"].astype(str)
    if simulations is None:
        return dict(zip(ids, ids))
    real_of = dict(zip(simulations["session_id"].astype(str), simulations["real_session_id"].astype(str)))
    missing = sorted(set(ids) - set(real_of))
    if missing:
        raise DialError(f"evaluate: simulator {name!r}: session(s) without a row in simulations.parquet: {missing[:5]}")
    return {sid: real_of[sid] for sid in ids}


def _discriminator(report: dict | None) -> dict | None:
    """The metrics of a discriminator report (its `metrics` object, or the metrics themselves)."""
    if not report:
        return None
    metrics = report.get("metrics", report)
    return {key: dict(value) for key, value in metrics.items() if isinstance(value, dict)}


def _group(
    name: str,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    simulations: pd.DataFrame | None,
    contexts: pd.DataFrame,
    params: EvaluateParams,
) -> dict:
    ids = set(sessions["session_id"].astype(str))
    own = messages[messages["session_id"].astype(str).isin(ids)]  # messages of other sessions are out of scope
    grounding = _grounding(sessions, simulations, name)
    return {
        "n_sessions": len(ids),
        "n_user_messages": int((own["role"] == "user").sum()),
        "n_chatbot_messages": int((own["role"] == "assistant").sum()),
        "lexical": lexical.lexical_summary(sessions, own, params.max_user_turns),
        "first_turn_diversity": realism.first_turn_diversity(own, sorted(ids)),
        "intent_decomposition": realism.intent_decomposition(own, grounding, contexts, params.max_user_turns),
    }


def evaluate(
    real_sessions: pd.DataFrame,
    real_messages: pd.DataFrame,
    simulated: Mapping[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]],
    contexts: pd.DataFrame,
    issues: pd.DataFrame | None = None,
    user_actions: pd.DataFrame | None = None,
    item_sessions: Mapping[str, str] | None = None,
    discriminator_reports: Mapping[str, dict | None] | None = None,
    termination: Mapping[str, pd.DataFrame] | None = None,
    params: EvaluateParams | None = None,
    issue_categories: Sequence[str] | None = None,
    action_groups: Mapping[str, str] | None = None,
) -> dict:
    """The full metrics structure (module docstring).

    `simulated` maps each simulator id, in report order (zero-shot, sft, it1, …), to its
    (sessions, messages, simulations) frames. `issue_categories` (the taxonomy's categories) and
    `action_groups` (action → group) make KL and BCE use the whole taxonomy rather than only what
    was observed. Returns {"order", "groups": {"real": {...}, <simulator>: {...}}, "judge", "settings"}.
    """
    params = params or EvaluateParams()
    if REAL in simulated:
        raise DialError(f"evaluate: {REAL!r} is reserved for the real sessions; rename that simulator")
    order = [REAL, *simulated]
    frames = {REAL: (real_sessions, real_messages, None), **{k: tuple(v) for k, v in simulated.items()}}
    groups = {name: _group(name, s, m, sim, contexts, params) for name, (s, m, sim) in frames.items()}

    # Judged sessions, per group and overall.
    item_sessions = {str(k): str(v) for k, v in (item_sessions or {}).items()}
    judged_all = set(item_sessions.values())
    session_group: dict[str, str] = {}
    for name, (s, _, _) in frames.items():
        for sid in s["session_id"].astype(str):
            if sid in session_group:
                raise DialError(f"evaluate: session {sid} is in both {session_group[sid]!r} and {name!r}")
            session_group[sid] = name
    judge = {
        "n_items": len(item_sessions),
        "n_judged_sessions_outside_groups": len(judged_all - set(session_group)),
    }

    issue_frame = action_frame = None
    if issues is not None:
        _require_columns(issues, ISSUE_COLUMNS, "issues")
        issue_frame = _with_sessions(issues, item_sessions, "issues")
        issue_frame["category"] = issue_frame["category"].astype(str)
    if user_actions is not None:
        _require_columns(user_actions, ACTION_COLUMNS, "user_actions")
        action_frame = _with_sessions(user_actions, item_sessions, "user_actions")
    for name, (s, m, _) in frames.items():
        judged = judged_all & set(s["session_id"].astype(str))
        groups[name]["issues"] = _issue_summary(s, m, judged, issue_frame) if issue_frame is not None else None
        groups[name]["actions"] = _action_summary(m, judged, action_frame) if action_frame is not None else None

    # KL(real ‖ sim) over one category list for every simulator.
    if issue_frame is not None:
        categories = sorted(
            set(issue_categories or ()) | {c for g in groups.values() for c in g["issues"]["category_counts"]}
        )
        real_counts = groups[REAL]["issues"]["category_counts"]
        for name in simulated:
            groups[name]["issues"]["kl_from_real"] = stats.kl_divergence(
                real_counts, groups[name]["issues"]["category_counts"], categories, params.kl_smoothing
            )
        groups[REAL]["issues"]["kl_from_real"] = None
        judge["n_issue_categories"] = len(categories)

    # BCE(real, sim) of the user-action rates per action group.
    if action_frame is not None:
        group_of = _action_groups(action_frame, action_groups)
        real_rates = groups[REAL]["actions"]["rates"]
        for name in order:
            actions = groups[name]["actions"]
            actions["groups"] = {a: group_of[a] for a in actions["rates"]}
            if name == REAL or not groups[REAL]["actions"]["n_user_messages"] or not actions["n_user_messages"]:
                actions["bce"] = None
            else:
                actions["bce"] = stats.bce_by_group(real_rates, actions["rates"], group_of, params.bce_eps)
        judge["n_actions"] = len(group_of)
        judge["action_groups"] = group_of

    # Discriminator, termination, predictive validity and A/B.
    discriminator_reports = discriminator_reports or {}
    termination = termination or {}
    real_chatbot_counts = _chatbot_counts(groups[REAL])
    for name in order:
        groups[name]["discriminator"] = _discriminator(discriminator_reports.get(name))
        predictions = termination.get(name)
        groups[name]["termination"] = realism.termination_f1(predictions) if predictions is not None else None
        if name == REAL:
            continue
        sim_counts = _chatbot_counts(groups[name])
        if groups[name]["issues"] is None:
            groups[name]["predictive_validity"] = {"applicable": False, "why": "no issue judge output"}
        else:
            groups[name]["predictive_validity"] = stats.predictive_validity(sim_counts, real_chatbot_counts)
        groups[name]["ab"] = {
            f"{pair.control}_vs_{pair.treatment}": (
                stats.ab_test(pair.control, pair.treatment, sim_counts, real_chatbot_counts)
                if groups[name]["issues"] is not None
                else {"control": pair.control, "treatment": pair.treatment, "simulation": {"applicable": False, "why": "no issue judge output"}, "real": {"applicable": False, "why": "no issue judge output"}, "directions_agree": None}
            )
            for pair in params.ab_pairs
        }
    tsne = "on" if params.tsne.enabled else "off"  # the picture itself: dial.evaluation.embeddings
    unknown = sorted(set(discriminator_reports) - set(order)) + sorted(set(termination) - set(order))
    if unknown:
        raise DialError(f"evaluate: reports for unknown group(s) {unknown}; groups are {order}")
    return {
        "order": order,
        "groups": groups,
        "judge": judge,
        "settings": {
            "kl_smoothing": params.kl_smoothing,
            "bce_eps": params.bce_eps,
            "max_user_turns": params.max_user_turns,
            "decimals": params.decimals,
            "ab_pairs": [pair.model_dump() for pair in params.ab_pairs],
            "tsne": tsne,
        },
    }


def _chatbot_counts(group: dict) -> dict[str, tuple[int, int]]:
    issues = group.get("issues")
    if not issues:
        return {}
    return {c: (v["k"], v["n"]) for c, v in issues["per_chatbot"].items()}


def dumps(metrics: dict) -> str:
    """The nested metrics as canonical JSON (for logs and debugging)."""
    return json.dumps(metrics, indent=2, sort_keys=True, default=str)
