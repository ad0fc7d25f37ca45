"""`hf` chatbots: several on one loaded model answer in one batched generation (tiny model)."""

import pytest

from dial.chatbots import ChatRequest, make_chatbots, reply_all
from dial.chatbots.replay import ReplayChatbot
from dial.params import ChatbotParams, DecodingParams


@pytest.fixture()
def chatbots(tiny_model_dir):
    params = [
        ChatbotParams(name="warm", backend="hf", system_prompt="be warm",
                      decoding=DecodingParams(temperature=0.7, top_p=0.9, max_new_tokens=9, max_sentences=2)),
        ChatbotParams(name="short", backend="hf", system_prompt="be brief",
                      decoding=DecodingParams(temperature=1.0, top_p=1.0, max_new_tokens=5)),
        ChatbotParams(name="replay", backend="replay"),
    ]
    return make_chatbots(params, tiny_model_dir, {"real-1": [["hello there"], ["bye"]]}, precision="fp32", batch_size=8)


def requests(n: int, seed: int = 0) -> list[ChatRequest]:
    return [ChatRequest(f"s{i}", "real-1", seed + i, [{"role": "user", "content": f"i had a long day {i}"}]) for i in range(n)]


def test_chatbots_on_one_model_answer_in_one_call_as_each_would_alone(chatbots):
    warm, short, replay = chatbots
    assert warm.generator is short.generator and not isinstance(replay, type(warm))
    calls = []
    original = warm.generator.generate
    warm.generator.generate = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        together = reply_all([(warm, requests(3)), (short, requests(2, seed=10)), (replay, requests(1))])
    finally:
        warm.generator.generate = original
    assert len(calls) == 1  # both hf chatbots in one generation
    warm.forget([f"s{i}" for i in range(3)])
    short.forget([f"s{i}" for i in range(2)])
    assert [r.text for r in together[0]] == [r.text for r in warm.reply(requests(3))]
    assert [r.text for r in together[1]] == [r.text for r in short.reply(requests(2, seed=10))]
    assert [r.text for r in together[2]] == ["hello there"]
    # Each row keeps its own budget: the short chatbot never exceeds 5 tokens.
    assert all(r.metadata["n_tokens"] <= 5 for r in together[1])
    assert isinstance(replay, ReplayChatbot)
