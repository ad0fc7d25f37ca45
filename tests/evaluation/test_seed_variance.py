"""Run-to-run spread of a chatbot's issue rate (simulate.n_simulations > 1): the per-run rates and
their spread worked out by hand, the one-run case, and the spread (with goal alignment) carried
through `evaluate` into metrics.json, report.md and `dial evaluate-chatbot`'s text."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dial.evaluation import goals
from dial.evaluation.chatbot import chatbot_issue_summary, render_summary
from dial.evaluation.evaluate import evaluate
from dial.evaluation.report import write_reports
from dial.evaluation.seed_variance import ONE_RUN, rate_spread
from dial.params import EvaluateParams
from eval_helpers import messages_frame

# Per (context, run): flagged chatbot messages, of 2 per session.
FLAGS = {("r1", 0): 1, ("r2", 0): 0, ("r1", 1): 2, ("r2", 1): 1}
STD = math.sqrt(((0.25 - 0.5) ** 2 + (0.75 - 0.5) ** 2) / (2 - 1))  # run 0: 1/4, run 1: 3/4


def test_the_spread_is_over_the_rates_of_whole_runs():
    # run 0: (1 + 0) / (2 + 2) = 25 %; run 1: (2 + 1) / 4 = 75 %; run 2: (0 + 1) / 4 = 25 %
    flags = {**FLAGS, ("r1", 2): 0, ("r2", 2): 1}
    ids = [f"{context}:{run}" for context, run in flags]
    spread = rate_spread(ids, np.array(list(flags.values())), np.full(len(ids), 2.0),
                         {sid: int(sid[-1]) for sid in ids}, {sid: sid[:2] for sid in ids}, 500, 0, "bot")
    assert spread["runs"] == {"0": {"rate": 0.25, "k": 1, "n": 4}, "1": {"rate": 0.75, "k": 3, "n": 4},
                              "2": {"rate": 0.25, "k": 1, "n": 4}}
    assert (spread["n_runs"], spread["n_contexts"], spread["n_sessions"]) == (3, 2, 6)
    assert (spread["min"], spread["max"]) == (0.25, 0.75) and spread["mean"] == pytest.approx(5 / 12)
    # deviations -1/6, +1/3, -1/6: variance (1/36 + 1/9 + 1/36) / 2 = 1/12
    assert spread["std"] == pytest.approx(math.sqrt(1 / 12))
    assert 0.0 <= spread["std_ci_low"] <= spread["std"] <= spread["std_ci_high"]


def test_one_simulation_per_context_reports_no_spread_instead_of_inventing_one():
    spread = rate_spread(["a", "b"], np.array([1.0, 0.0]), np.array([2.0, 2.0]), {"a": 0, "b": 0}, {"a": "r1", "b": "r2"}, 200, 0, "x")
    assert spread == {"n_runs": 1, "n_contexts": 2, "n_sessions": 2, "applicable": False, "why": ONE_RUN}


def frames():
    """Two real sessions (their contexts) and four `sft` sessions: 2 contexts × 2 runs of one chatbot."""
    contexts = pd.DataFrame({
        "session_id": ["r1", "r2"], "profile": ["", ""], "long_term": ["", ""], "previous_summaries": ["[]", "[]"],
        "current_summary": ["Main topics: work, sister. The user's tone is negative (tired); the user asks no questions."] * 2,
        "context_text": ["ctx", "ctx"],
    })
    sessions = lambda ids: pd.DataFrame([{"session_id": sid, "user_id": "u", "source": "test", "session_index": 0,
                                          "started_at": None, "chatbot_id": "bot", "topic": None, "metadata": "{}"} for sid in ids])
    real_messages = messages_frame([("r1", "user", "work is hard"), ("r1", "assistant", "why"),
                                    ("r2", "user", "my sister?"), ("r2", "assistant", "yes")])
    rows = []
    for (context, run), flagged in FLAGS.items():
        sid = f"sim:sft:bot:{context}:{run}"
        rows += [(sid, "user", "hello"), (sid, "assistant", "hi"), (sid, "user", "ok"), (sid, "assistant", "fine")]
    sim_messages = messages_frame(rows)
    sim_ids = sorted(set(sim_messages["session_id"]))
    simulations = pd.DataFrame({"session_id": sim_ids, "real_session_id": [sid.split(":")[3] for sid in sim_ids],
                                "chatbot_id": "bot", "simulation_index": [int(sid[-1]) for sid in sim_ids], "stop_reason": "max_turns"})
    issues = pd.DataFrame(
        [(sid, turn, "App Bugs", "Unclear", "", "rules") for sid in sim_ids
         for turn in (1, 3)[: FLAGS[(sid.split(":")[3], int(sid[-1]))]]],
        columns=["item_id", "turn_index", "group", "category", "evidence", "judge"],
    )
    return sessions(["r1", "r2"]), real_messages, sessions(sim_ids), sim_messages, simulations, contexts, issues


def test_evaluate_reports_the_run_spread_and_goal_alignment_with_the_real_users_as_control(tmp_path):
    real_sessions, real_messages, sim_sessions, sim_messages, simulations, contexts, issues = frames()
    tracker = goals.RulesGoalTracker()
    goal_states = {"real": goals.group_goal_states(real_sessions, real_messages, None, contexts, tracker),
                   "sft": goals.group_goal_states(sim_sessions, sim_messages, simulations, contexts, tracker)}
    item_sessions = {sid: sid for sid in [*real_sessions["session_id"], *sim_sessions["session_id"]]}
    metrics = evaluate(real_sessions, real_messages, {"sft": (sim_sessions, sim_messages, simulations)}, contexts,
                       issues=issues, item_sessions=item_sessions, params=EvaluateParams(bootstrap_samples=200, ab_pairs=[]),
                       goal_states=goal_states)
    write_reports(metrics, tmp_path)
    flat = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert flat["sft.issues.run_spread.bot.runs.0.rate"] == 0.25 and flat["sft.issues.run_spread.bot.runs.1.rate"] == 0.75
    assert flat["sft.issues.run_spread.bot.std"] == pytest.approx(STD, abs=1e-6) and flat["sft.issues.run_spread.bot.n_contexts"] == 2
    assert "sft.issues.run_spread.bot.std_ci_low" in flat
    # r1 "work is hard": work, the negative tone, no question: 3 of 4; r2 "my sister?": sister only: 1 of 4
    assert flat["real.goals.rate"] == 0.5 and flat["real.goals.n_sessions"] == 2
    assert (flat["real.goals.categories.task_objective.k"], flat["real.goals.categories.task_objective.n"]) == (2, 4)
    # the simulated users ("hello", "ok") raise no topic and no mood, but ask no question: 1 of 4 each
    assert flat["sft.goals.rate"] == 0.25 and flat["sft.goals.n_sessions"] == 4
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Goal alignment (UGST)" in report and "| real (control) | 50.00% [" in report
    assert "## Run-to-run spread of the issue rate" in report
    assert "| sft | bot | 2 × 2 | 0: 25.00% (1 / 4); 1: 75.00% (3 / 4) | 25.00% – 75.00% |" in report


def test_with_one_run_the_report_and_evaluate_chatbot_say_there_is_no_spread(tmp_path):
    real_sessions, real_messages, sim_sessions, sim_messages, simulations, contexts, issues = frames()
    first_runs = simulations[simulations["simulation_index"] == 0]
    keep = set(first_runs["session_id"])
    sim_sessions = sim_sessions[sim_sessions["session_id"].isin(keep)]
    sim_messages = sim_messages[sim_messages["session_id"].isin(keep)]
    issues = issues[issues["item_id"].isin(keep)]
    item_sessions = {sid: sid for sid in [*real_sessions["session_id"], *keep]}
    metrics = evaluate(real_sessions, real_messages, {"sft": (sim_sessions, sim_messages, first_runs)}, contexts,
                       issues=issues, item_sessions=item_sessions, params=EvaluateParams(bootstrap_samples=200, ab_pairs=[]))
    write_reports(metrics, tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "One simulation per context: no run-to-run spread." in report and "| sft | bot |" not in report
    summary = chatbot_issue_summary(sim_messages, sim_sessions, issues, item_sessions, n_resamples=200, simulations=first_runs)
    text = render_summary({"simulator": "sft", "judge": "rules", "sessions": 2, "stop_reasons": {"max_turns": 2}, "chatbots": summary})
    assert "bot: run-to-run spread of the issue rate: one simulation per context: no run-to-run spread (1 run(s) × 2 contexts)" in text


def test_evaluate_chatbot_prints_each_runs_rate_and_the_spread():
    _, _, sim_sessions, sim_messages, simulations, _, issues = frames()
    item_sessions = {sid: sid for sid in sim_sessions["session_id"]}
    summary = chatbot_issue_summary(sim_messages, sim_sessions, issues, item_sessions, n_resamples=200, simulations=simulations)
    spread = summary["bot"]["run_spread"]
    assert spread["std"] == pytest.approx(STD) and summary["bot"]["rate"] == 0.5  # all runs pooled: 4 / 8
    text = render_summary({"simulator": "sft", "judge": "rules", "sessions": 4, "stop_reasons": {"max_turns": 4}, "chatbots": summary})
    line = next(line for line in text.splitlines() if "run-to-run" in line)
    assert line.startswith("bot: run-to-run spread of the issue rate: 2 runs × 2 contexts: per run 25.00% (1/4), 75.00% (3/4); "
                           f"min 25.00%, max 75.00%, std {100 * STD:.2f} [")
