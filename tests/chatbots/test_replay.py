"""The replay chatbot answers a user turn with the real partner's whole turn (a burst stays one
turn), so the simulated user speaks where the real user spoke and nowhere else."""

from __future__ import annotations

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from dial.chatbots import ChatRequest
from dial.chatbots.replay import ReplayChatbot, count_turns, partner_turns
from dial.params import SimulateParams
from dial.simulation.simulate import SessionState, Simulation


def real_messages(roles: list[str], session_id: str = "r0") -> pd.DataFrame:
    return pd.DataFrame(
        {"session_id": session_id, "turn_index": range(len(roles)), "role": roles,
         "text": [f"{role} {i}" for i, role in enumerate(roles)]}
    )


def test_partner_turns_group_consecutive_assistant_messages():
    messages = real_messages(["user", "assistant", "assistant", "user", "user", "assistant", "user"])
    assert partner_turns(messages.sample(frac=1, random_state=0)) == {"r0": [["assistant 1", "assistant 2"], ["assistant 5"]]}


@given(st.lists(st.sampled_from(["user", "assistant"]), max_size=30))
def test_partner_turns_keep_every_assistant_message_in_order_one_turn_per_run(roles):
    turns = partner_turns(real_messages(roles)).get("r0", [])
    messages = real_messages(roles)
    assert [text for turn in turns for text in turn] == list(messages.loc[messages["role"] == "assistant", "text"])
    conversation = [{"role": role, "content": ""} for role in roles]
    assert len(turns) == count_turns(conversation, "assistant")


def test_a_replayed_burst_is_one_reply_with_follow_ups_then_the_chatbot_ends():
    bot = ReplayChatbot("replay", {"r0": [["hi", "how are you?"], ["I see."]]})
    first = [{"role": "user", "content": "hello"}]
    (reply,) = bot.reply([ChatRequest("s0", "r0", 0, first)])
    assert reply.messages == ["hi", "how are you?"] and reply.text == "hi"
    after_burst = first + [{"role": "assistant", "content": "hi"}, {"role": "assistant", "content": "how are you?"},
                           {"role": "user", "content": "fine"}, {"role": "user", "content": "and you?"}]
    (second,) = bot.reply([ChatRequest("s0", "r0", 1, after_burst)])
    assert second.messages == ["I see."]
    (ended,) = bot.reply([ChatRequest("s0", "r0", 2, after_burst + [{"role": "assistant", "content": "I see."}])])
    assert ended.text is None and ended.messages == []


class OneMessagePerTurn:
    """Stands in for the simulator: one user message per turn, numbered."""

    def __init__(self):
        self.turn = 0

    def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
        from dial.simulation.generation import Generated

        self.turn += 1
        return [Generated(text=f"user turn {self.turn}", n_tokens=3, hit_max_tokens=False) for _ in conversations]

    def forget(self, keys=None):
        pass


def test_in_a_simulation_the_user_answers_once_after_a_replayed_burst():
    state = SessionState(session_id="s0", real_session_id="r0", real_user_id="u", chatbot_id="replay", simulation_index=0,
                         seed=0, context_text="ctx", current_summary="summary", topic=None)
    bot = ReplayChatbot("replay", {"r0": [["a1", "a2"], ["a3"]]})
    Simulation(OneMessagePerTurn(), [bot], SimulateParams(max_turns=5)).run([state], progress=False)
    assert state.history == [("user", "user turn 1"), ("assistant", "a1"), ("assistant", "a2"),
                             ("user", "user turn 2"), ("assistant", "a3"), ("user", "user turn 3")]
    assert state.stop_reason == "chatbot_ended"
