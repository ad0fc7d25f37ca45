"""The evaluation of every simulator against the real users (METHOD.md §6–7; DIAL paper §4.3, §5).

`evaluate` gathers, for the real sessions and for each simulator's sessions (a *group* each):

* lexical diversity of the user messages (`lexical`; table 1);
* first-turn diversity and intent decomposition (`realism`; UserLM);
* issue rate with its standard error, per-category shares, KL(real ‖ sim) and per-chatbot rates
  (`stats`; figure 2, table 3, figure 4), from the issue judge's output;
* user-action rates and BCE(real, sim) per action group (table 4, figure 5), from the action judge;
* the discriminator's held-out accuracy / F1 / MCC (table 2), read from its report, with the
  structure-only baseline's accuracy when the report has one (`structure_baseline`);
* the share of messages cut at the max_new_tokens cap, read from the simulate reports (`truncation`);
* dialogue-termination F1 when termination predictions are given;
* the held-out perplexity of the real user messages under each simulator, as computed by
  `dial.evaluation.perplexity` (`perplexity`, with its interval), when given;
* predictive validity (Pearson across chatbot configurations, table 3) and A/B replication
  (table 5) for the configured (control, treatment) chatbot pairs;
* simulator errors (`simulator_errors`: role breaks, context copied verbatim, a stated name / age /
  gender against the profile, ending mid-task) per group, the real users' row being the rules'
  false-positive floor, and the issue rate without the sessions the simulator broke
  (`issues.without_simulator_errors`);
* goal alignment (`goals`, UGST): the share of each session's goal sub-components (from the context
  of the real session that grounds it: profile, current-session summary) that the user's turns
  advanced or stayed consistent with, the real users' row tracked against their own contexts;
* the run-to-run spread of each chatbot's issue rate (`issues.run_spread`, `seed_variance`): with
  `simulate.n_simulations` > 1, the rate of each run (every context's j-th simulation) and their
  min / max / std, or "one simulation per context" with one;
* the `aggregate` row (paper table 3): the sessions of the simulators in `evaluate.aggregate`
  pooled (concatenated) for the issue rate, KL, correlation and A/B, intervals by bootstrap over
  the pooled sessions (`metrics["aggregate"]`, None with fewer than two such simulators);
* 95 % intervals beside the metrics and each simulator compared with the baseline (`vs_baseline`),
  with the key convention and the choice of interval in `dial.evaluation.intervals`.

Like for like (issue #11): real held-out sessions run far longer than simulated ones, so every
session is cut after the same number of user turns (`cut_sessions`) before the judge or any metric
reads it; each group's `n_sessions`, `n_user_messages` and `n_chatbot_messages` are the counts
after the cut. The termination probe is the exception: it asks where real sessions end, so it reads
them whole.

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
import re
from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from dial.errors import DialError
from dial.evaluation import goals, intervals, lexical, realism, seed_variance, simulator_errors, stats
from dial.evaluation import structure as session_structure
from dial.params import AGGREGATE_ITERATIONS, AbPair, DecodingParams, EvaluateParams, TerminationParams, TsneParams  # noqa: F401 (defined with the other params)
from dial.prompting import user_messages_in_turns

log = logging.getLogger(__name__)

REAL = "real"
AGGREGATE = "aggregate"
ISSUE_COLUMNS = ("item_id", "turn_index", "category")
ACTION_COLUMNS = ("item_id", "turn_index", "group", "action")


def termination_decoding(simulate_decoding: DecodingParams, params: TerminationParams) -> DecodingParams:
    """The simulator's own sampling (as in simulation), with only a few new tokens."""
    return simulate_decoding.model_copy(update={"max_new_tokens": params.max_new_tokens})


# --------------------------------------------------------------------------------------------
# Like for like: every session cut at the same number of user turns
# --------------------------------------------------------------------------------------------


def cut_length(roles: Sequence[str], user_turns: int) -> int:
    """How many of a session's messages (roles in turn order) the cut keeps: up to the end of its
    `user_turns`-th user turn (a burst of consecutive user messages is one turn) and the one
    chatbot message right after it, which is where a simulated session of `user_turns` turns stops
    (`dial.simulation.simulate`: each user turn gets one chatbot reply, the last one too). A session with
    fewer user turns is kept whole."""
    user_positions = [i for i, role in enumerate(roles) if role == "user"]
    n_kept_users = user_messages_in_turns(roles, user_turns)
    if n_kept_users == len(user_positions):
        return len(roles)
    last_user = user_positions[n_kept_users - 1]
    reply = last_user + 1 < len(roles) and roles[last_user + 1] == "assistant"
    return last_user + 1 + int(reply)


def cut_sessions(messages: pd.DataFrame, user_turns: int) -> pd.DataFrame:
    """`messages` (sorted by session and turn) with every session cut by `cut_length`.

    Only the end moves: a real session keeps its own shape before it (a chatbot opening, several
    messages in a row by one side), which the per-group message counts show. Simulated sessions of
    at most `user_turns` turns are unchanged: one that ended early is not padded."""
    if user_turns < 1:
        raise DialError(f"evaluate: sessions are cut after at least 1 user turn (got {user_turns})")
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable").reset_index(drop=True)
    kept = {str(sid): cut_length(list(group["role"]), user_turns) for sid, group in ordered.groupby("session_id", sort=True)}
    position = ordered.groupby("session_id", sort=False).cumcount()
    return ordered[position < ordered["session_id"].astype(str).map(kept)].reset_index(drop=True)


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
) -> tuple[dict, dict]:
    """Per-session counts (flagged and chatbot messages, flagged pairs) and the summary: issue rate
    (+ SE), category counts and per-chatbot counts over the judged sessions of a group."""
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
    samples = {
        "k": flagged["session_id"].value_counts(),
        "n": chatbot_messages["session_id"].astype(str).value_counts(),
        "pairs": pairs[["session_id", "category"]],
    }
    return samples, {
        **summary,
        "n_sessions_judged": len(judged),
        "n_issue_rows": int(len(found)),
        "n_not_on_chatbot_message": int((~on_chatbot).sum()) if len(found) else 0,
        "n_flagged_pairs": int(len(pairs)),
        "category_counts": category_counts,
        "categories": {c: n / len(pairs) for c, n in category_counts.items()} if len(pairs) else {},
        "per_chatbot": per_chatbot,
    }


def _action_summary(messages: pd.DataFrame, judged: set[str], actions: pd.DataFrame) -> tuple[dict, dict]:
    """Per-session counts (user messages, found actions) and the summary: action rates per user message."""
    in_group = messages[messages["session_id"].astype(str).isin(judged)]
    n_user = int((in_group["role"] == "user").sum())
    role_of = _roles(in_group)
    found = actions[actions["session_id"].isin(judged)]
    on_user = np.array([role_of.get((s, t)) == "user" for s, t in zip(found["session_id"], found["turn_index"])], dtype=bool)
    valid = (found[on_user] if len(found) else found).drop_duplicates(["session_id", "turn_index", "action"])
    counts = valid["action"].astype(str).value_counts()
    samples = {"n": in_group.loc[in_group["role"] == "user", "session_id"].astype(str).value_counts(), "found": valid[["session_id", "action"]]}
    return samples, {
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
    """The metrics of a discriminator report (its `metrics` object, or the metrics themselves), and
    its structure-only baseline when it has one (keys renamed to `accuracy_ci_low`/`_high`)."""
    if not report:
        return None
    metrics = report.get("metrics", report)
    result = {key: dict(value) for key, value in metrics.items() if isinstance(value, dict) and key != "structure_baseline"}
    baseline = report.get("structure_baseline") or metrics.get("structure_baseline")
    if isinstance(baseline, dict) and baseline.get("accuracy") is not None:
        result["structure_baseline"] = {
            "accuracy": baseline["accuracy"],
            "accuracy_ci_low": baseline.get("ci_low"),
            "accuracy_ci_high": baseline.get("ci_high"),
            "n": baseline.get("n"),
            **({"n_effective": baseline["n_effective"]} if "n_effective" in baseline else {}),
        }
    return result


def _truncation(report: dict | None) -> dict | None:
    """The simulate report's share of messages cut at the max_new_tokens cap (user side and per
    chatbot), keys renamed to the `share_ci_low`/`_high` convention; None when absent."""
    found = (report or {}).get("truncation")
    if not isinstance(found, dict):
        return None

    def entry(value: dict) -> dict:
        return {
            "truncated": value.get("truncated"),
            "messages": value.get("messages"),
            "share": value.get("share"),
            "share_ci_low": value.get("ci_low"),
            "share_ci_high": value.get("ci_high"),
            **({"trimmed": value["trimmed"]} if "trimmed" in value else {}),  # user turns trimmed to a sentence end
        }

    result = {}
    if isinstance(found.get("user"), dict):
        result["user"] = entry(found["user"])
    chatbots = found.get("chatbots") or {}
    result["chatbots"] = {str(name): entry(value) for name, value in sorted(chatbots.items()) if isinstance(value, dict)}
    return result


def _group(
    name: str,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    simulations: pd.DataFrame | None,
    contexts: pd.DataFrame,
    user_turns: int | None,
) -> tuple[dict, intervals.GroupSample]:
    ids = sorted(set(sessions["session_id"].astype(str)))
    own = messages[messages["session_id"].astype(str).isin(ids)]  # messages of other sessions are out of scope
    if user_turns is not None:
        ordered = own.sort_values(["session_id", "turn_index"], kind="stable")
        too_long = sorted(
            str(session_id) for session_id, group in ordered.groupby("session_id", sort=True)
            if cut_length(list(group["role"]), user_turns) < len(group)
        )
        if too_long:
            raise DialError(
                f"evaluate: {name}: session(s) {too_long[:5]} go on past {user_turns} user turns; cut them with cut_sessions"
            )
    grounding = _grounding(sessions, simulations, name)
    per_session = lexical.per_session(sessions.drop_duplicates("session_id"), own)
    overlaps, _, _ = realism.intent_overlaps(own, grounding, contexts)
    sample = intervals.GroupSample(
        session_ids=ids,
        lexical=per_session,
        intent_sums=np.array([sum(overlaps.get(sid, [])) for sid in ids], dtype=np.float64),
        intent_counts=np.array([len(overlaps.get(sid, [])) for sid in ids], dtype=np.float64),
    )
    summary = {
        "n_sessions": len(ids),
        "n_user_messages": int((own["role"] == "user").sum()),
        "n_chatbot_messages": int((own["role"] == "assistant").sum()),
        "lexical": lexical.summarise(per_session),
        "first_turn_diversity": realism.first_turn_diversity(own, ids),
        "intent_decomposition": realism.intent_decomposition(own, grounding, contexts),
    }
    return summary, sample


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
    simulate_reports: Mapping[str, dict | None] | None = None,
    simulated_user_turns: int | None = None,
    user_turns: int | None = None,
    perplexity: Mapping[str, dict] | None = None,
    structure: Mapping[str, pd.DataFrame] | None = None,
    discriminator_scores: Mapping[str, pd.DataFrame] | None = None,
    user_ended: Mapping[str, Mapping[str, bool]] | None = None,
    goal_states: Mapping[str, pd.DataFrame] | None = None,
    goal_tracker: str = "rules",
) -> dict:
    """The full metrics structure (module docstring).

    `simulated` maps each simulator id, in report order (zero-shot, sft, it1, …), to its
    (sessions, messages, simulations) frames. `issue_categories` (the taxonomy's categories) and
    `action_groups` (action → group) make KL and BCE use the whole taxonomy rather than only what
    was observed. `simulate_reports` (simulator → its reports/simulate JSON) give the truncation
    shares; `simulated_user_turns` (the user messages a simulated session, as the discriminator saw
    it, can have at most) lets the report mark later discriminator turns "not simulated".
    Sessions are measured as given: `user_turns` says at how many user turns the caller cut every
    session (`cut_sessions`, done before judging so that the judge sees the same messages) and is
    checked; None = not cut. `perplexity` (simulator → `perplexity.held_out_perplexity`'s result)
    is carried as is into that simulator's group. `structure` (group → `structure.per_session`
    frame, of the same cut sessions) gives each group its session shape with intervals.
    `discriminator_scores` (simulator → its discriminator's held-out message scores,
    `valid_scores.csv`) add the balanced accuracy with a session-bootstrap interval.
    `user_ended` (group → session → its user ended it within the compared turns) feeds the
    ended-mid-task flag; None = the simulated sessions' `stop_reason` (user_ended), no real one.
    `goal_states` (group → `goals.group_goal_states` frame, of the same cut sessions, by the
    tracker named `goal_tracker`) give each group its goal-alignment rates (`goals`).
    Returns {"order", "groups": {"real": {...}, <simulator>: {...}}, "aggregate", "judge", "settings"}.
    """
    params = params or EvaluateParams()
    for reserved, what in ((REAL, "the real sessions"), (AGGREGATE, "the pooled simulators")):
        if reserved in simulated:
            raise DialError(f"evaluate: {reserved!r} is reserved for {what}; rename that simulator")
    order = [REAL, *simulated]
    frames = {REAL: (real_sessions, real_messages, None), **{k: tuple(v) for k, v in simulated.items()}}
    groups, samples, error_frames = {}, {}, {}
    for name, (s, m, sim) in frames.items():
        groups[name], samples[name] = _group(name, s, m, sim, contexts, user_turns)
        error_frames[name] = _simulator_error_sessions(name, s, m, sim, contexts, samples[name].session_ids, user_ended)
        groups[name]["simulator_errors"] = simulator_errors.summarise(error_frames[name], params.bootstrap_samples, params.seed, name)
        if goal_states is not None and name in goal_states:
            groups[name]["goals"] = goals.summarise(
                goal_states[name], samples[name].session_ids, params.bootstrap_samples, params.seed, name, goal_tracker
            )

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
        groups[name]["issues"] = groups[name]["actions"] = None
        ids = samples[name].session_ids
        if issue_frame is not None:
            per_session, groups[name]["issues"] = _issue_summary(s, m, judged, issue_frame)
            samples[name].issue_k = per_session["k"].reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
            samples[name].issue_n = per_session["n"].reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
            chatbot_of = dict(zip(s["session_id"].astype(str), s["chatbot_id"].fillna("").astype(str)))
            samples[name].chatbots = np.array([chatbot_of.get(sid, "") for sid in ids], dtype=object)
            samples[name].issue_pairs = per_session["pairs"]
            groups[name]["issues"]["without_simulator_errors"] = _issues_without_simulator_errors(
                samples[name], judged, error_frames[name], params, name
            )
            simulations = frames[name][2]
            if simulations is not None and "simulation_index" in simulations:  # each chatbot's issue rate per run (simulation_index), and its spread
                groups[name]["issues"]["run_spread"] = seed_variance.per_chatbot_spread(
                    ids, samples[name].issue_k, samples[name].issue_n, samples[name].chatbots,
                    dict(zip(simulations["session_id"].astype(str), simulations["simulation_index"].astype(int))),
                    _grounding(s, simulations, name), params.bootstrap_samples, params.seed, name,
                )
        if action_frame is not None:
            per_session, groups[name]["actions"] = _action_summary(m, judged, action_frame)
            samples[name].action_n = per_session["n"].reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
            samples[name].action_found = per_session["found"]

    # KL(real ‖ sim) over one category list for every simulator.
    categories: list[str] = []
    if issue_frame is not None:
        categories = sorted(
            set(issue_categories or ()) | {c for g in groups.values() for c in g["issues"]["category_counts"]}
        )
        real_counts = groups[REAL]["issues"]["category_counts"]
        for name in simulated:
            sim_counts = groups[name]["issues"]["category_counts"]
            groups[name]["issues"]["kl_from_real"] = stats.kl_divergence(real_counts, sim_counts, categories, params.kl_smoothing)
            groups[name]["issues"]["kl_unsmoothed"] = stats.kl_unsmoothed(real_counts, sim_counts)
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
    perplexity = perplexity or {}
    real_chatbot_counts = _chatbot_counts(groups[REAL])
    simulate_reports = simulate_reports or {}
    for name in order:
        if structure and name in structure:
            groups[name]["structure"] = session_structure.summarise(structure[name], params.bootstrap_samples, params.seed, name)
        groups[name]["discriminator"] = _discriminator(discriminator_reports.get(name))
        scores = (discriminator_scores or {}).get(name)
        if scores is not None and groups[name]["discriminator"] and groups[name]["discriminator"].get("overall"):
            balanced = intervals.discriminator_balanced_accuracy(scores, params.bootstrap_samples, params.seed, name)
            if balanced is not None:
                groups[name]["discriminator"]["overall"].update(balanced[0])
                samples[name].replicates["discriminator_balanced_accuracy"] = balanced[1]
        predictions = termination.get(name)
        groups[name]["termination"] = realism.termination_f1(predictions) if predictions is not None else None
        if predictions is not None:
            scored = predictions[predictions["status"] == realism.GENERATED] if "status" in predictions else predictions
            samples[name].termination = scored
        if name == REAL:
            continue
        truncation = _truncation(simulate_reports.get(name))
        if truncation is not None:
            groups[name]["truncation"] = truncation
        if name in perplexity:
            groups[name]["perplexity"] = dict(perplexity[name])
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
    unknown += sorted(set(perplexity) - set(simulated))  # a simulator's measure: none for the real group
    unknown += sorted(set(structure or {}) - set(order)) + sorted(set(goal_states or {}) - set(order))
    if unknown:
        raise DialError(f"evaluate: reports for unknown group(s) {unknown}; groups are {order}")

    # 95 % intervals, then each simulator against the baseline (dial.evaluation.intervals).
    intervals.add_intervals(
        groups,
        samples,
        categories=categories,
        group_of=judge.get("action_groups"),
        n_resamples=params.bootstrap_samples,
        seed=params.seed,
        kl_smoothing=params.kl_smoothing,
        bce_eps=params.bce_eps,
    )
    intervals.compare_with_baseline(groups, samples, order)
    pooled = aggregate_simulators(params.aggregate, list(simulated))
    aggregate = None
    if len(pooled) >= 2:  # a pool of one simulator is that simulator's row
        aggregate = _aggregate(pooled, groups, samples, categories, params, real_chatbot_counts)
    return {
        "order": order,
        "groups": groups,
        "aggregate": aggregate,
        "judge": judge,
        "settings": {
            "kl_smoothing": params.kl_smoothing,
            "bce_eps": params.bce_eps,
            "max_user_turns": user_turns,
            "decimals": params.decimals,
            "bootstrap_samples": params.bootstrap_samples,
            "seed": params.seed,
            "simulated_user_turns": simulated_user_turns,
            "ab_pairs": [pair.model_dump() for pair in params.ab_pairs],
            "tsne": tsne,
            "aggregate": pooled,
        },
    }


# --------------------------------------------------------------------------------------------
# Simulator errors and the issue rate without the sessions they broke
# --------------------------------------------------------------------------------------------


def _simulator_error_sessions(
    name: str, sessions: pd.DataFrame, messages: pd.DataFrame, simulations: pd.DataFrame | None, contexts: pd.DataFrame,
    session_ids: Sequence[str], user_ended: Mapping[str, Mapping[str, bool]] | None,
) -> pd.DataFrame:
    """`simulator_errors.per_session` of a group: each session read against the context of the
    real session that grounds it (a real session: its own)."""
    if user_ended is not None:
        ended = dict(user_ended.get(name, {}))
    elif simulations is not None and "stop_reason" in simulations:
        ended = session_structure.simulated_ended(simulations)
    else:
        ended = {}  # real sessions: who ended them is known only to the caller (whole sessions)
    own = messages[messages["session_id"].astype(str).isin(set(session_ids))]
    contexts_of = simulator_errors.contexts_of(_grounding(sessions, simulations, name), contexts)
    return simulator_errors.per_session(own, contexts_of, ended, session_ids)


def _issues_without_simulator_errors(
    sample: intervals.GroupSample, judged: set[str], error_sessions: pd.DataFrame, params: EvaluateParams, name: str
) -> dict:
    """The issue rate over the judged sessions that have no simulator error: what the chatbot did
    with users who stayed in role. Interval: the same bootstrap draws over the group's sessions as
    its usual issue rate (`intervals.add_intervals`), the excluded sessions counting for nothing,
    so that with nothing excluded both intervals are the same."""
    flagged = set(error_sessions.loc[error_sessions["flagged"].astype(bool), "session_id"].astype(str))
    kept = np.array([sid not in flagged for sid in sample.session_ids], dtype=np.float64)
    weights = stats.resample_weights(len(sample.session_ids), params.bootstrap_samples, stats.stable_rng(params.seed, name))
    rate = intervals.clustered_rate(sample.issue_k * kept, sample.issue_n * kept, weights)
    return {**rate, "n_sessions_judged": len(judged - flagged), "n_sessions_excluded": len(judged & flagged)}


# --------------------------------------------------------------------------------------------
# The aggregate row: simulators pooled (paper table 3)
# --------------------------------------------------------------------------------------------


def aggregate_simulators(configured: Sequence[str], simulators: Sequence[str]) -> list[str]:
    """The evaluated simulators `evaluate.aggregate` names, in report order; AGGREGATE_ITERATIONS
    stands for every DIAL iteration (it1, it2, ...). Names not evaluated in this run are left out."""
    wanted = set(configured)
    return [
        name for name in simulators
        if name in wanted or (AGGREGATE_ITERATIONS in wanted and re.fullmatch(r"it\d+", name))
    ]


def _aggregate(
    pooled: Sequence[str], groups: dict, samples: Mapping[str, intervals.GroupSample], categories: Sequence[str],
    params: EvaluateParams, real_chatbot_counts: Mapping[str, tuple[int, int]],
) -> dict:
    """Issue rate, KL(real ‖ pooled), predictive validity and A/B of the pooled sessions: the
    sessions of every pooled simulator concatenated, so the rate is Σk / Σn over them (each
    simulator weighs by its chatbot messages) and the intervals come from one bootstrap over the
    pooled sessions."""
    result: dict = {"simulators": list(pooled), "n_sessions": sum(len(samples[name].session_ids) for name in pooled)}
    if any(groups[name]["issues"] is None for name in pooled):
        result["issues"] = None
        result["predictive_validity"] = {"applicable": False, "why": "no issue judge output"}
        return result
    parts = [samples[name] for name in pooled]
    sample = intervals.GroupSample(
        session_ids=[sid for part in parts for sid in part.session_ids],
        lexical=pd.concat([part.lexical for part in parts], ignore_index=True),
        intent_sums=np.concatenate([part.intent_sums for part in parts]),
        intent_counts=np.concatenate([part.intent_counts for part in parts]),
        issue_k=np.concatenate([part.issue_k for part in parts]),
        issue_n=np.concatenate([part.issue_n for part in parts]),
        chatbots=np.concatenate([part.chatbots for part in parts]),
        issue_pairs=pd.concat([part.issue_pairs for part in parts], ignore_index=True),
    )
    summaries = [groups[name]["issues"] for name in pooled]
    category_counts = Counter()
    per_chatbot_counts: dict[str, list[int]] = {}
    for summary in summaries:
        category_counts.update(summary["category_counts"])
        for chatbot, rate in summary["per_chatbot"].items():
            k, n = per_chatbot_counts.setdefault(chatbot, [0, 0])
            per_chatbot_counts[chatbot] = [k + rate["k"], n + rate["n"]]
    n_pairs = sum(category_counts.values())
    issues = {
        **stats.proportion(sum(summary["k"] for summary in summaries), sum(summary["n"] for summary in summaries)),
        "n_sessions_judged": sum(summary["n_sessions_judged"] for summary in summaries),
        "n_flagged_pairs": n_pairs,
        "category_counts": dict(sorted(category_counts.items())),
        "categories": {c: count / n_pairs for c, count in sorted(category_counts.items())} if n_pairs else {},
        "per_chatbot": {c: stats.proportion(k, n) for c, (k, n) in sorted(per_chatbot_counts.items())},
    }
    real_counts = groups[REAL]["issues"]["category_counts"]
    issues["kl_from_real"] = stats.kl_divergence(real_counts, issues["category_counts"], categories, params.kl_smoothing) if categories else None
    issues["kl_unsmoothed"] = stats.kl_unsmoothed(real_counts, issues["category_counts"])
    weights = stats.resample_weights(len(sample.session_ids), params.bootstrap_samples, stats.stable_rng(params.seed, AGGREGATE))
    intervals.add_issue_intervals(issues, sample, weights, categories)
    if categories:
        intervals.add_kl_interval(issues, sample, samples[REAL], params.kl_smoothing)
    counts = {c: (rate["k"], rate["n"]) for c, rate in issues["per_chatbot"].items()}
    result["issues"] = issues
    result["predictive_validity"] = stats.predictive_validity(counts, real_chatbot_counts)
    result["ab"] = {
        f"{pair.control}_vs_{pair.treatment}": stats.ab_test(pair.control, pair.treatment, counts, real_chatbot_counts)
        for pair in params.ab_pairs
    }
    return result


def _chatbot_counts(group: dict) -> dict[str, tuple[int, int]]:
    issues = group.get("issues")
    if not issues:
        return {}
    return {c: (v["k"], v["n"]) for c, v in issues["per_chatbot"].items()}


def dumps(metrics: dict) -> str:
    """The nested metrics as canonical JSON (for logs and debugging)."""
    return json.dumps(metrics, indent=2, sort_keys=True, default=str)
