"""The evaluate stage like for like: `run_evaluate` cuts real held-out sessions at the simulated
sessions' number of user turns before the judge and the metrics read them, reports the counts
after the cut, and leaves whole sessions to the termination probe."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dial import io, paths
from dial.errors import DialError
from dial.evaluation import run
from dial.evaluation.judges import Judge, opaque_id
from dial.evaluation.judges.base import action_frame, issue_frame
from dial.evaluation.realism import TERMINATION_COLUMNS
from dial.params import Params

REAL_TURNS = {"real-long": 10, "real-short": 2}  # user turns of the held-out real sessions
# Real sessions no simulation is grounded on: one of a held-out (test-split) user, one of a training user.
UNSIMULATED_TURNS = {"real-unsimulated": 4, "real-train": 3}
SPLIT_OF = {"real-long": "test", "real-short": "test", "real-unsimulated": "test", "real-train": "train"}
SIMULATED_TURNS = 3


def exchanges(session_id: str, n_user_turns: int) -> list[dict]:
    """(user, chatbot) exchanges; each user message has 3 words."""
    rows = []
    for turn in range(n_user_turns):
        rows.append({"session_id": session_id, "role": "user", "text": f"user says {turn}"})
        rows.append({"session_id": session_id, "role": "assistant", "text": f"chatbot answers turn {turn}"})
    return rows


def messages_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["turn_index"] = frame.groupby("session_id").cumcount()
    frame["timestamp"] = None
    frame["metadata"] = "{}"
    return frame


def sessions_frame(session_ids, source: str) -> pd.DataFrame:
    return pd.DataFrame([{"session_id": sid, "user_id": f"user-of-{sid}", "source": source, "session_index": 0,
                          "started_at": None, "chatbot_id": "replay", "topic": None, "metadata": "{}"}
                         for sid in session_ids])


def write_workspace() -> None:
    """Real held-out sessions, their contexts and one `sft` simulation of 3 user turns per real
    session, at the stage's paths under the current directory."""
    real_ids = sorted(REAL_TURNS)
    all_turns = {**REAL_TURNS, **UNSIMULATED_TURNS}
    all_ids = sorted(all_turns)
    io.SESSIONS.write(sessions_frame(all_ids, "test"), paths.sessions_file(paths.SCRUBBED_DIR))
    io.MESSAGES.write(messages_frame([row for sid in all_ids for row in exchanges(sid, all_turns[sid])]),
                      paths.messages_file(paths.SCRUBBED_DIR))
    io.SPLITS.write(pd.DataFrame({"user_id": [f"user-of-{sid}" for sid in all_ids], "split": [SPLIT_OF[sid] for sid in all_ids]}),
                    paths.SPLITS_FILE)
    io.CONTEXTS.write(pd.DataFrame({
        "session_id": all_ids, "user_id": [f"user-of-{sid}" for sid in all_ids], "instruction": "be the user",
        "profile": "", "long_term": "", "previous_summaries": json.dumps(["the user talked about work"]),
        "current_summary": "keywords: work", "recent_history": "[]", "context_text": "context", "n_tokens": 10,
        "n_previous_summaries_dropped": 0, "n_history_messages_dropped": 0, "long_term_dropped": False,
    }), paths.CONTEXTS_FILE)
    simulated_ids = [f"sim-{sid}" for sid in real_ids]
    directory = paths.simulated_dir("sft")
    io.SESSIONS.write(sessions_frame(simulated_ids, "simulated:sft"), paths.sessions_file(directory))
    io.MESSAGES.write(messages_frame([row for sid in simulated_ids for row in exchanges(sid, SIMULATED_TURNS)]),
                      paths.messages_file(directory))
    io.SIMULATIONS.write(pd.DataFrame({
        "session_id": simulated_ids, "simulator_id": "sft", "chatbot_id": "replay", "real_session_id": real_ids,
        "real_user_id": [f"user-of-{sid}" for sid in real_ids], "simulation_index": 0, "seed": 0, "stop_reason": "max_turns",
        "n_user_messages": SIMULATED_TURNS, "n_assistant_messages": SIMULATED_TURNS, "user_tokens_generated": 9,
        "guardrail_retries": 0, "guardrail_flagged": 0,
    }), directory / "simulations.parquet")


class RecordingJudge(Judge):
    """Finds nothing; keeps every item it was shown."""

    name = "recording"

    def __init__(self) -> None:
        self.items = []

    def annotate(self, items, progress=True):
        self.items.extend(items)
        return issue_frame([]), action_frame([])


@pytest.fixture
def workspace(tmp_path, monkeypatch, repo_root):
    monkeypatch.chdir(tmp_path)
    write_workspace()
    judge = RecordingJudge()
    monkeypatch.setattr(run, "build_judge", lambda params, taxonomy: judge)
    params = Params.model_validate({
        "simulate": {"max_turns": SIMULATED_TURNS},
        "judge": {"taxonomy": str(repo_root / "taxonomy.yaml")},
        "evaluate": {"termination": {"enabled": False}, "perplexity": {"enabled": False}},  # both need a model
    })
    return params, judge, tmp_path


def judged_roles(judge: RecordingJudge, session_id: str, params: Params) -> list[str]:
    item_id = opaque_id(session_id, params.judge.id_salt)
    (item,) = [item for item in judge.items if item.item_id == item_id]
    return [role for _, role, _ in item.messages]


def test_the_judge_sees_real_sessions_cut_to_the_simulated_shape_and_short_ones_whole(workspace):
    params, judge, root = workspace
    run.run_evaluate(params, ["sft"], root / "data" / "evaluation", root / "reports", progress=False)
    assert judged_roles(judge, "real-long", params) == ["user", "assistant"] * SIMULATED_TURNS
    assert judged_roles(judge, "real-long", params) == judged_roles(judge, "sim-real-long", params)
    assert judged_roles(judge, "real-short", params) == ["user", "assistant"] * REAL_TURNS["real-short"]


def test_metrics_and_report_give_the_counts_after_the_cut(workspace):
    params, _, root = workspace
    run.run_evaluate(params, ["sft"], root / "data" / "evaluation", root / "reports", progress=False)
    flat = json.loads((root / "reports" / "metrics.json").read_text(encoding="utf-8"))
    assert (flat["real.n_sessions"], flat["real.n_user_messages"], flat["real.n_chatbot_messages"]) == (2, 3 + 2, 3 + 2)
    assert (flat["sft.n_sessions"], flat["sft.n_user_messages"], flat["sft.n_chatbot_messages"]) == (2, 3 + 3, 3 + 3)
    assert flat["real.lexical.n_words_mean"] == (3 * 3 + 2 * 3) / 2  # 3 words a user message, the long session cut at 3
    assert "cut after 3 user turns" in (root / "reports" / "report.md").read_text(encoding="utf-8")


def test_the_termination_probe_reads_whole_held_out_sessions_grounding_a_simulation_or_not(workspace, monkeypatch):
    params, _, root = workspace
    termination = params.evaluate.termination.model_copy(update={"enabled": True})
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"termination": termination})})
    probed = {}

    def probe(params, generator, simulator, real_sessions, real_messages, contexts, progress):
        probed.update(real_messages.groupby("session_id")["turn_index"].count().to_dict())
        return pd.DataFrame([[simulator, "real-long", 19, True, True, "generated", "bye"]], columns=TERMINATION_COLUMNS)

    monkeypatch.setattr(run, "load_simulator", lambda params, simulator: None)  # the stand-in probe needs no model
    monkeypatch.setattr(run, "termination_probe", probe)
    run.run_evaluate(params, ["sft"], root / "data" / "evaluation", root / "reports", progress=False)
    held_out = {sid: turns for sid, turns in {**REAL_TURNS, **UNSIMULATED_TURNS}.items() if SPLIT_OF[sid] == "test"}
    assert probed == {sid: 2 * turns for sid, turns in held_out.items()}


@pytest.mark.parametrize(("max_user_turns", "expected"), [(0, SIMULATED_TURNS), (2, 2)])
def test_max_user_turns_zero_means_simulate_max_turns(max_user_turns, expected):
    params = Params.model_validate({"simulate": {"max_turns": SIMULATED_TURNS}, "evaluate": {"max_user_turns": max_user_turns}})
    assert run.compared_user_turns(params) == expected


def test_a_cut_past_the_last_simulated_turn_is_an_error():
    params = Params.model_validate({"simulate": {"max_turns": SIMULATED_TURNS}, "evaluate": {"max_user_turns": SIMULATED_TURNS + 1}})
    with pytest.raises(DialError, match="exceeds simulate.max_turns"):
        run.compared_user_turns(params)


@pytest.mark.parametrize("max_user_turns, expected", [(0, 2), (2, 0)])
def test_a_simulated_user_who_ended_past_the_cut_did_not_end_mid_task(workspace, max_user_turns, expected):
    params, _, root = workspace
    directory = paths.simulated_dir("sft")
    simulations = io.SIMULATIONS.read(directory / "simulations.parquet").assign(stop_reason="user_ended")
    io.SIMULATIONS.write(simulations, directory / "simulations.parquet")
    messages = io.MESSAGES.read(paths.messages_file(directory))
    messages["text"] = messages["text"].where(messages["role"] == "user", "and what happened next?")
    io.MESSAGES.write(messages, paths.messages_file(directory))
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"max_user_turns": max_user_turns})})
    run.run_evaluate(params, ["sft"], root / "data" / "evaluation", root / "reports", progress=False)
    flat = json.loads((root / "reports" / "metrics.json").read_text(encoding="utf-8"))
    # Whole (3 turns): each user left right after a question. Cut at 2: the ending lies past the cut.
    assert flat["sft.simulator_errors.sessions_by_flag.ended_mid_task"] == expected
    assert flat["real.simulator_errors.sessions_by_flag.ended_mid_task"] == 0  # real-short left after a statement
    assert "## Simulator errors (role adherence)" in (root / "reports" / "report.md").read_text(encoding="utf-8")
