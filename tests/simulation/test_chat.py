"""`dial chat`'s loop: the simulator plays the user against a person (scripted input) or a backend."""

import pytest

from dial.simulation.chat import chat_loop
from dial.chatbots.replay import ReplayChatbot
from dial.simulation.generation import ChatGenerator, load_chat_model
from dial.params import DecodingParams

SAMPLING = DecodingParams(temperature=1.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, precision="fp32")
    return ChatGenerator(model, tokenizer, batch_size=1)


def test_simulator_talks_to_a_person_until_they_quit(generator):
    replies = iter(["hello, how can I help?", "tell me more", "/quit"])
    shown, asked = [], []
    reason = chat_loop(generator, "You are a tired student.", SAMPLING, None,
                       ask=lambda prompt: asked.append(prompt) or next(replies), say=shown.append, max_turns=10)
    assert reason == "chatbot_ended"
    assert len(asked) == 3 and sum(line.startswith("USER") for line in shown) == 3


def test_simulator_talks_to_a_backend_which_ends_it(generator):
    shown = []
    bot = ReplayChatbot("replay", {"chat": [["one"], ["two"]]})
    reason = chat_loop(generator, "ctx", SAMPLING, bot, ask=lambda prompt: pytest.fail("no typing with a backend"),
                       say=shown.append, max_turns=5)
    assert reason == "chatbot_ended"
    assert [line for line in shown if line.startswith("CHATBOT")] == ["CHATBOT one", "CHATBOT two"]
    assert shown[-1] == "--- the chatbot ended the conversation"


def test_max_turns(generator):
    shown = []
    reason = chat_loop(generator, "ctx", SAMPLING, None, ask=lambda prompt: "go on", say=shown.append, max_turns=2)
    assert reason == "max_turns" and shown[-1] == "--- 2 turns reached"
