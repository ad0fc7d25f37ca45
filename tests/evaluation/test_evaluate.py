"""Like for like: `cut_sessions` cuts a real session to the shape the simulation engine gives a
simulated session of as many user turns, keeps shorter sessions whole, and `evaluate` measures the
cut sessions and refuses sessions longer than the cut it is told about."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dial.chatbots.replay import ReplayChatbot, partner_turns
from dial.errors import DialError
from dial.evaluation.evaluate import cut_sessions, evaluate
from dial.simulation.generation import Generated
from dial.params import SimulateParams
from dial.simulation.simulate import SessionState, Simulation, to_frames
from eval_helpers import messages_frame


messages = messages_frame


def alternating(session_id: str, n_user_turns: int, chatbot_ends: bool = True):
    """A session of `n_user_turns` (user, chatbot) exchanges; without the last reply when not `chatbot_ends`."""
    rows = []
    for turn in range(n_user_turns):
        rows.append((session_id, "user", f"user says {turn}"))
        if turn < n_user_turns - 1 or chatbot_ends:
            rows.append((session_id, "assistant", f"chatbot says {turn}"))
    return rows


class ScriptedUser:
    """Stands in for ChatGenerator: a new user message every turn, never the end marker."""

    def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
        return [Generated(text=f"simulated message {len(c)}", n_tokens=3, hit_max_tokens=False) for c in conversations]

    def forget(self, keys=None):
        pass


def simulated_messages(real: pd.DataFrame, max_turns: int) -> pd.DataFrame:
    """The messages the simulation engine writes for one session of at most `max_turns` user
    turns, its chatbot replaying the real session's chatbot messages."""
    replies = partner_turns(real.assign(session_id="real"))["real"]
    state = SessionState(session_id="sim", real_session_id="real", real_user_id="u", chatbot_id="replay", simulation_index=0,
                         seed=0, context_text="context", current_summary="summary", topic=None)
    Simulation(ScriptedUser(), [ReplayChatbot("replay", {"real": replies})], SimulateParams(max_turns=max_turns)).run(
        [state], progress=False
    )
    return to_frames([state], "sft")[1]


@pytest.mark.parametrize("user_turns", [1, 3])
def test_a_long_real_session_is_cut_to_the_shape_of_a_simulated_session_of_as_many_turns(user_turns):
    real = messages(alternating("real", 10))
    simulated = simulated_messages(real, max_turns=user_turns)
    cut = cut_sessions(real, user_turns)
    assert list(cut["role"]) == list(simulated["role"])  # same user and chatbot message counts, same order
    assert (cut["role"] == "assistant").sum() == (simulated["role"] == "assistant").sum() == user_turns
    assert list(cut["text"]) == list(real["text"][: 2 * user_turns])  # the beginning of the real session


def test_the_cut_keeps_one_chatbot_reply_after_the_last_user_turn_and_the_real_shape_before_it():
    roles = ["assistant", "user", "user", "assistant", "assistant", "user", "assistant", "assistant", "user"]
    real = messages([("real", role, f"message {i}") for i, role in enumerate(roles)])
    # A burst is one user turn (the simulator writes a turn at a time): turn 1 = positions 1-2,
    # turn 2 = 5, turn 3 = 8. One chatbot reply after the 1st turn: positions 0..3.
    assert list(cut_sessions(real, 1)["turn_index"]) == [0, 1, 2, 3]
    # The 2nd turn is position 5; its reply is position 6, the second chatbot message after it goes.
    assert list(cut_sessions(real, 2)["turn_index"]) == [0, 1, 2, 3, 4, 5, 6]
    # The 3rd turn ends the session: nothing follows it to keep.
    assert list(cut_sessions(real, 3)["turn_index"]) == list(range(9))


def test_sessions_shorter_than_the_cut_stay_whole_and_are_not_padded():
    frame = messages(alternating("short", 2) + alternating("user-ended", 3, chatbot_ends=False) + alternating("long", 5))
    cut = cut_sessions(frame, 3)
    kept = cut.groupby("session_id")["turn_index"].count().to_dict()
    assert kept == {"short": 4, "user-ended": 5, "long": 6}
    with pytest.raises(DialError, match="at least 1"):
        cut_sessions(frame, 0)


def frames_for_evaluate(real_messages: pd.DataFrame):
    sessions = pd.DataFrame([{"session_id": sid, "user_id": f"u-{sid}", "source": "test", "session_index": 0, "started_at": None,
                              "chatbot_id": "replay", "topic": None, "metadata": "{}"}
                             for sid in sorted(set(real_messages["session_id"]))])
    contexts = pd.DataFrame({"session_id": sessions["session_id"], "current_summary": "keywords: work", "long_term": "",
                             "previous_summaries": json.dumps(["the user talked about work"])})
    return sessions, contexts


def test_evaluate_counts_the_messages_of_the_cut_sessions():
    whole = messages(alternating("long", 10) + alternating("short", 2))
    sessions, contexts = frames_for_evaluate(whole)
    metrics = evaluate(sessions, cut_sessions(whole, 3), {}, contexts, user_turns=3)
    real = metrics["groups"]["real"]
    assert (real["n_sessions"], real["n_user_messages"], real["n_chatbot_messages"]) == (2, 3 + 2, 3 + 2)
    assert real["lexical"]["n_words_mean"] == (3 * 3 + 2 * 3) / 2  # "user says <turn>": 3 words a message
    assert metrics["settings"]["max_user_turns"] == 3


def test_evaluate_refuses_sessions_longer_than_the_cut_it_is_told_about():
    whole = messages(alternating("long", 10))
    sessions, contexts = frames_for_evaluate(whole)
    with pytest.raises(DialError, match="go on past 3 user turns"):
        evaluate(sessions, whole, {}, contexts, user_turns=3)
