"""`dial evaluate-chatbot`: the offline test a team runs before deploying a chatbot.

A trained simulator plays held-out real users (their contexts) against one or more chatbots, the
configured judge annotates every session, and each chatbot gets its issue rate (% of its
messages with at least one issue, with the binomial standard error and a 95 % bootstrap interval
over its sessions) and category breakdown. With two chatbots, the first is the control and the
second the treatment of a two-proportion z-test (the paper's A/B replication, table 5).

The simulated users are checked too (`dial.evaluation.simulator_errors`: role breaks, context
copied verbatim, a profile contradicted, ending mid-task): the simulator's error rate, and each
chatbot's issue rate again without the sessions the simulator broke, so that a chatbot is not
blamed for answering a user who spoke as the assistant. Their goal alignment (UGST,
`dial.evaluation.goals`, by the judge's backend: the LLM with `openai`, the rules otherwise) says
how far each simulated user pursued the goal of the real user it plays, overall and per chatbot.

With `--n-simulations` k > 1 each chatbot's issue rate is also given per run (run j: every
context's j-th simulation) with the spread across runs (min, max, std with a 95 % bootstrap over
contexts; `dial.evaluation.seed_variance`); with k = 1 the output says there is no run-to-run spread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dial import io, paths
from dial.errors import DialError
from dial.evaluation import goals, intervals, seed_variance, simulator_errors, stats
from dial.evaluation.structure import simulated_ended
from dial.evaluation.judges import build_judge, judge_inputs
from dial.evaluation.taxonomy import load_taxonomy
from dial.params import Params

log = logging.getLogger(__name__)


def chatbot_issue_summary(
    messages: pd.DataFrame,
    sessions: pd.DataFrame,
    issues: pd.DataFrame,
    item_sessions: dict,
    broken_sessions: set[str] = frozenset(),
    n_resamples: int = 1000,
    seed: int = 0,
    simulations: pd.DataFrame | None = None,
) -> dict:
    """Per chatbot: issue rate over its messages (+ SE, 95 % bootstrap interval over its sessions)
    and the count of each issue category; `without_simulator_errors`: the same rate over its
    sessions not in `broken_sessions` (same bootstrap draws), with its k, n and sessions;
    `run_spread` (with `simulations`: each session's simulation_index and real_session_id): the
    rate of each run and their spread (`seed_variance.rate_spread`)."""
    chatbot_of = dict(zip(sessions["session_id"].astype(str), sessions["chatbot_id"].astype(str)))
    chatbot_messages = messages[messages["role"] == "assistant"].copy()
    chatbot_messages["chatbot_id"] = chatbot_messages["session_id"].astype(str).map(chatbot_of)
    found = issues.assign(session_id=issues["item_id"].map(item_sessions))
    role_of = {(str(s), int(t)): r for s, t, r in zip(messages["session_id"], messages["turn_index"], messages["role"])}
    on_chatbot = np.array([role_of.get((s, int(t))) == "assistant" for s, t in zip(found["session_id"], found["turn_index"])], dtype=bool)
    found = found.loc[on_chatbot]  # a boolean array: an empty list would select no column instead (no issue at all)
    found = found.assign(chatbot_id=found["session_id"].map(chatbot_of))
    summary = {}
    for chatbot_id, own in chatbot_messages.groupby("chatbot_id", sort=True):
        flagged = found[found["chatbot_id"] == chatbot_id]
        k = len(flagged.drop_duplicates(["session_id", "turn_index"]))
        categories = flagged.drop_duplicates(["session_id", "turn_index", "category"])["category"].value_counts()
        session_ids = sorted(own["session_id"].astype(str).unique())
        n_per_session = own["session_id"].astype(str).value_counts().reindex(session_ids).to_numpy(dtype=np.float64)
        k_per_session = (
            flagged.drop_duplicates(["session_id", "turn_index"])["session_id"].astype(str).value_counts()
            .reindex(session_ids, fill_value=0).to_numpy(dtype=np.float64)
        )
        weights = stats.resample_weights(len(session_ids), n_resamples, stats.stable_rng(seed, "evaluate-chatbot", str(chatbot_id)))
        usual = intervals.clustered_rate(k_per_session, n_per_session, weights)
        kept = np.array([sid not in broken_sessions for sid in session_ids], dtype=np.float64)
        clean = intervals.clustered_rate(k_per_session * kept, n_per_session * kept, weights)
        summary[chatbot_id] = {
            **stats.proportion(k, len(own)),
            "rate_ci_low": usual["rate_ci_low"],
            "rate_ci_high": usual["rate_ci_high"],
            "sessions": len(session_ids),
            "categories": {str(c): int(n) for c, n in sorted(categories.items(), key=lambda item: (-item[1], item[0]))},
            "without_simulator_errors": {**clean, "sessions": int(kept.sum()), "sessions_excluded": int(len(kept) - kept.sum())},
        }
        if simulations is not None:
            summary[chatbot_id]["run_spread"] = seed_variance.rate_spread(
                session_ids, k_per_session, n_per_session,
                dict(zip(simulations["session_id"].astype(str), simulations["simulation_index"].astype(int))),
                dict(zip(simulations["session_id"].astype(str), simulations["real_session_id"].astype(str))),
                n_resamples, seed, f"evaluate-chatbot:{chatbot_id}",
            )
    return summary


def simulated_session_errors(
    sessions: pd.DataFrame, messages: pd.DataFrame, simulations: pd.DataFrame, contexts: pd.DataFrame
) -> pd.DataFrame:
    """`simulator_errors.per_session` of simulated sessions, each read against the context of the
    real session that grounded it, ended by the user where its `stop_reason` is user_ended."""
    grounding = dict(zip(simulations["session_id"].astype(str), simulations["real_session_id"].astype(str)))
    return simulator_errors.per_session(
        messages, simulator_errors.contexts_of(grounding, contexts), simulated_ended(simulations), sessions["session_id"]
    )


def chatbot_goal_summary(
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    simulations: pd.DataFrame,
    contexts: pd.DataFrame,
    tracker,
    n_resamples: int,
    seed: int,
    simulator_id: str,
) -> tuple[dict, pd.DataFrame]:
    """Goal alignment (UGST, `dial.evaluation.goals`) of the simulated users, each session against
    the goal of the real session that grounds it: over all sessions and per chatbot (the sessions
    that chatbot answered), with 95 % bootstrap intervals over sessions. Returns (summary, the
    goal states)."""
    states = goals.group_goal_states(sessions, messages, simulations, contexts, tracker)
    ids = sessions["session_id"].astype(str)
    summary = goals.summarise(states, list(ids), n_resamples, seed, simulator_id, tracker.name)
    summary["per_chatbot"] = {}
    chatbot_of = sessions["chatbot_id"].fillna("").astype(str)
    for chatbot in sorted(set(chatbot_of)):
        own = list(ids[chatbot_of == chatbot])
        summary["per_chatbot"][chatbot] = goals.summarise(
            states[states["session_id"].isin(set(own))], own, n_resamples, seed, f"{simulator_id}:{chatbot}", tracker.name
        )
    return summary, states


def evaluate_chatbots(
    params: Params,
    simulator_id: str,
    chatbot_names: Sequence[str],
    n_contexts: int,
    n_simulations: int,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Simulate `n_contexts` held-out contexts × `n_simulations` against each named chatbot (from
    `params.chatbots`), judge every session, and summarise per chatbot (+ A/B test for two)."""
    from dial.chatbots import make_chatbots
    from dial.chatbots.replay import partner_turns
    from dial.simulation.backends import load_simulator
    from dial.simulation.simulate import Simulation, plan_sessions, select_contexts, to_frames

    configured = {chatbot.name: chatbot for chatbot in params.chatbots}
    unknown = [name for name in chatbot_names if name not in configured]
    if unknown or not chatbot_names:
        raise DialError(f"evaluate-chatbot: unknown chatbot(s) {unknown or '(none given)'}; params.yaml has {sorted(configured)}")
    adapter = paths.simulator_adapter_dir(simulator_id)
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        raise DialError(f"{adapter}: simulator {simulator_id!r} is not trained yet (run `dvc repro`)")
    simulate_params = params.simulate.model_copy(update={"n_contexts": n_contexts, "n_simulations": n_simulations})

    sessions = io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR))
    messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
    contexts = io.CONTEXTS.read(paths.CONTEXTS_FILE)
    splits = io.SPLITS.read(paths.SPLITS_FILE)
    selected = select_contexts(contexts, sessions, messages, splits, simulate_params)
    states = plan_sessions(selected, list(chatbot_names), simulator_id, simulate_params)
    simulator = load_simulator(simulator_id, params.simulator, paths.BASE_MODEL_DIR, adapter, simulate_params.precision,
                               simulate_params.batch_size)
    chatbots = make_chatbots([configured[name] for name in chatbot_names], paths.BASE_MODEL_DIR, partner_turns(messages),
                             simulate_params.precision, simulate_params.batch_size)
    try:
        Simulation(
            simulator, chatbots, simulate_params, params.sft_samples.end_marker,
            message_separator=params.sft_samples.message_separator,
        ).run(states, progress=progress)
    finally:
        for chatbot in chatbots:
            chatbot.close()
        if hasattr(simulator, "close"):
            simulator.close()
    sim_sessions, sim_messages, simulations = to_frames(states, simulator_id)

    taxonomy = load_taxonomy(params.judge.taxonomy)
    items, item_sessions = judge_inputs(sim_messages, salt=params.judge.id_salt)
    with build_judge(params.judge, taxonomy) as judge:
        issues, user_actions = judge.annotate(items, progress=progress)

    tracker = goals.build_goal_tracker(params.judge)
    goal_summary, goal_states = chatbot_goal_summary(
        sim_sessions, sim_messages, simulations, contexts, tracker, params.evaluate.bootstrap_samples, params.evaluate.seed,
        simulator_id,
    )
    error_sessions = simulated_session_errors(sim_sessions, sim_messages, simulations, contexts)
    broken = set(error_sessions.loc[error_sessions["flagged"].astype(bool), "session_id"])
    per_chatbot = chatbot_issue_summary(
        sim_messages, sim_sessions, issues, item_sessions, broken, params.evaluate.bootstrap_samples, params.evaluate.seed,
        simulations=simulations,
    )
    result = {
        "simulator": simulator_id,
        "judge": params.judge.backend,
        "sessions": int(len(sim_sessions)),
        "stop_reasons": {str(k): int(v) for k, v in simulations["stop_reason"].value_counts().sort_index().items()},
        "simulator_errors": simulator_errors.summarise(
            error_sessions, params.evaluate.bootstrap_samples, params.evaluate.seed, simulator_id
        ),
        "chatbots": per_chatbot,
        "goals": goal_summary,
    }
    if len(chatbot_names) == 2:
        control, treatment = (per_chatbot.get(name, {"k": 0, "n": 0}) for name in chatbot_names)
        result["ab_test"] = {
            "control": chatbot_names[0],
            "treatment": chatbot_names[1],
            **stats.two_proportion_z_test(control["k"], control["n"], treatment["k"], treatment["n"]),
        }
    if out_dir is not None:
        out_dir = Path(out_dir)
        io.SESSIONS.write(sim_sessions, paths.sessions_file(out_dir))
        io.MESSAGES.write(sim_messages, paths.messages_file(out_dir))
        io.SIMULATIONS.write(simulations, out_dir / "simulations.parquet")
        io.ISSUES.write(issues, out_dir / "issues.parquet")
        io.USER_ACTIONS.write(user_actions, out_dir / "user_actions.parquet")
        io.GOAL_STATES.write(goal_states.assign(group=simulator_id, tracker=tracker.name), out_dir / "goal_states.parquet")
        io.write_json_atomic(out_dir / "summary.json", result)
    return result


def render_summary(result: dict) -> str:
    """The summary as a short plain-text report."""
    lines = [f"simulator {result['simulator']}, judge {result['judge']}, {result['sessions']} sessions "
             f"(stop reasons: {', '.join(f'{k} {v}' for k, v in result['stop_reasons'].items())})", ""]
    errors = result.get("simulator_errors")
    if errors:
        by_message, by_session = errors["messages_by_flag"], errors["sessions_by_flag"]
        lines += [
            f"simulator errors: {_percent_with_interval(errors, 'rate')} of {errors['n']} user messages ({errors['k']}), "
            f"{_percent_with_interval(errors, 'session_rate')} of {errors['n_sessions']} sessions ({errors['sessions_flagged']}); "
            f"role break {by_message['role_break']}, context copied {by_message['verbatim_context']}, "
            f"contradicts profile {by_message['contradicts_profile']} messages; ended mid-task {by_session['ended_mid_task']} sessions",
            "",
        ]
    goal = result.get("goals")
    if goal:
        per_chatbot = "; ".join(
            f"{name} {_percent_with_interval(entry, 'rate')} ({entry['n_sessions']})" for name, entry in goal.get("per_chatbot", {}).items()
        )
        lines += [
            f"goal alignment (UGST, {goal['tracker']} tracker): {_percent_with_interval(goal, 'rate')} of the goal's sub-components "
            f"reached per session, {goal['n_sessions']} sessions ({goal['n_sessions_without_goal']} without a goal)"
            + (f"; per chatbot: {per_chatbot}" if per_chatbot else ""),
            "",
        ]
    lines.append(f"{'chatbot':<20} {'sessions':>8} {'messages':>8} {'issue rate [95% CI]':>26} {'± se':>7}"
                 f"   {'without simulator errors [95% CI] (n, sessions)':<40}")
    for name, row in result["chatbots"].items():
        se = "—" if row["se"] is None else f"{100 * row['se']:.2f}"
        clean = row.get("without_simulator_errors")
        clean_text = (f"{_percent_with_interval(clean, 'rate')} (n {clean['n']}, {clean['sessions']} sessions)" if clean else "—")
        lines.append(f"{name:<20} {row['sessions']:>8} {row['n']:>8} {_percent_with_interval(row, 'rate'):>26} {se:>7}   {clean_text}")
    spreads = {name: row["run_spread"] for name, row in result["chatbots"].items() if row.get("run_spread")}
    if spreads:
        lines.append("")
        lines += [f"{name}: run-to-run spread of the issue rate: {_run_spread_text(spread)}" for name, spread in spreads.items()]
    for name, row in result["chatbots"].items():
        if row["categories"]:
            lines.append(f"\n{name}: " + "; ".join(f"{category} {n}" for category, n in row["categories"].items()))
    ab = result.get("ab_test")
    if ab:
        lines.append("")
        if ab["z"] is None:
            lines.append(f"A/B {ab['control']} → {ab['treatment']}: z-test undefined (an empty arm or no issues at all)")
        else:
            lines.append(
                f"A/B {ab['control']} → {ab['treatment']}: issue rate {100 * ab['control_rate']:.2f}% → "
                f"{100 * ab['treatment_rate']:.2f}% (difference {100 * ab['difference']:+.2f} pp), z = {ab['z']:.2f}, p = {ab['p']:.3g}"
            )
    return "\n".join(lines)


def _run_spread_text(spread: dict) -> str:
    """One line of `seed_variance.rate_spread`: each run's rate, min / max and the std with its interval."""
    if not spread.get("applicable"):
        return f"{spread['why']} ({spread['n_runs']} run(s) × {spread['n_contexts']} contexts)"
    runs = ", ".join(f"{100 * r['rate']:.2f}% ({r['k']}/{r['n']})" if r["rate"] is not None else "—" for r in spread["runs"].values())
    low, high = spread.get("std_ci_low"), spread.get("std_ci_high")
    interval = f" [{100 * low:.2f}, {100 * high:.2f}]" if low is not None and high is not None else ""
    return (f"{spread['n_runs']} runs × {spread['n_contexts']} contexts: per run {runs}; min {100 * spread['min']:.2f}%, "
            f"max {100 * spread['max']:.2f}%, std {100 * spread['std']:.2f}{interval} pp")


def _percent_with_interval(entry: dict, name: str) -> str:
    """"12.50% [8.10%, 17.00%]" of `entry[name]` and its `_ci_low` / `_ci_high` siblings."""
    value, low, high = entry.get(name), entry.get(f"{name}_ci_low"), entry.get(f"{name}_ci_high")
    if value is None:
        return "—"
    if low is None or high is None:
        return f"{100 * value:.2f}%"
    return f"{100 * value:.2f}% [{100 * low:.2f}%, {100 * high:.2f}%]"
