"""The `openai` simulator backend against a real server (`python -m dial.simulation.serve` with the
tiny model, as vLLM would serve a simulator by name), no mocks: the same tokens as the local
backend, the simulate stage through it, and clear errors when the server or the adapter is missing."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from serve_helpers import ServeProcess

from dial import io, paths
from dial.params import DecodingParams, Params, SimulateParams, SimulatorParams, SimulatorServerParams
from dial.prompting import simulator_messages
from dial.simulation.backends import OpenAIGenerator, SimulatorServerError, load_simulator
from dial.simulation.generation import ChatGenerator
from dial.simulation.simulate import run_simulate

from test_simulate import END, REPLAY, project  # noqa: F401 (project: the fixture)

CONVERSATIONS = [
    simulator_messages("profile: a tired nurse. situation: night shifts", []),
    simulator_messages("profile: a student. situation: exams", [("user", "hey"), ("assistant", "hi, how are you?")]),
]
DECODING = DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=12)
SEEDS = [11, 2**30 + 5]  # < 2**31: the backend sends seeds mod 2**31, so these reach the server unchanged


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    # batch size 1: each request is generated alone, as the local generator below generates each row
    server = ServeProcess(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log",
                          "--model-name", "base", "--strict-model-name", "--batch-size", "1", "--precision", "fp32")
    yield server
    server.stop()


def settings(url: str, **overrides) -> SimulatorParams:
    return SimulatorParams(backend="openai", server=SimulatorServerParams(base_url=url, timeout_s=30, max_retries=0, **overrides))


def test_the_server_renders_and_samples_what_the_local_generator_does(served, tiny_model_dir):
    generator = load_simulator("zero-shot", settings(served.url), tiny_model_dir, None, "fp32", 8)
    assert isinstance(generator, OpenAIGenerator) and generator.model == "base"
    remote = generator.generate(CONVERSATIONS, DECODING, SEEDS)
    generator.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server runs with --threads 1: the same float reductions
    try:
        local = ChatGenerator.load(tiny_model_dir, None, precision="fp32", batch_size=1)
        expected = [local.generate([conversation], DECODING, [seed])[0] for conversation, seed in zip(CONVERSATIONS, SEEDS)]
    finally:
        torch.set_num_threads(threads)
    assert [g.text for g in remote] == [g.text for g in expected]
    assert [g.n_tokens for g in remote] == [g.n_tokens for g in expected]
    assert [g.hit_max_tokens for g in remote] == [g.hit_max_tokens for g in expected]
    # The same prompt tokens: the server's usage counts what the local template renders.
    health = served.health()
    assert health["stats"]["requests"] >= 2


def test_prompt_token_counts_match_the_local_rendering(served, tiny_model_dir):
    from dial.openai_client import chat_completion

    local = ChatGenerator.load(tiny_model_dir, None, precision="fp32", batch_size=1)
    for conversation, ids in zip(CONVERSATIONS, local.prompt_ids(CONVERSATIONS)):
        completion = chat_completion(served.url, "base", conversation, api_key_env=None, timeout_s=30, max_retries=0,
                                     temperature=0.0, max_tokens=1, what="test")
        assert completion.usage["prompt_tokens"] == len(ids)


def test_a_simulator_the_server_does_not_serve_is_a_clear_error(served, tiny_model_dir):
    generator = OpenAIGenerator(settings(served.url).server, "it9", load_simulator("zero-shot", SimulatorParams(), tiny_model_dir, None, "fp32", 1).tokenizer)
    with pytest.raises(SimulatorServerError, match=r"'it9'.*404.*--lora-modules it9="):
        generator.generate(CONVERSATIONS[:1], DECODING, [1])
    generator.close()


def test_a_server_that_is_down_is_a_clear_error(tiny_model_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    generator = load_simulator("sft", settings(f"http://127.0.0.1:{port}/v1"), tiny_model_dir, None, "fp32", 1)
    with pytest.raises(SimulatorServerError, match=r"simulator 'sft' \(served model 'sft'\).*is the server running"):
        generator.generate(CONVERSATIONS, DECODING, SEEDS)
    generator.close()


def test_served_model_names_and_local_only_decoding_rules():
    server = SimulatorServerParams(model="dial-{simulator}", base_model="smollm2")
    assert [server.served_model(s) for s in ("zero-shot", "sft", "it2")] == ["smollm2", "dial-sft", "dial-it2"]
    with pytest.raises(ValueError, match="max_sentences"):
        Params(simulator={"backend": "openai"}, simulate={"decoding": {"max_sentences": 1}})


def test_the_simulate_stage_runs_on_the_server(project, served, tiny_model_dir):  # noqa: F811 (the fixture)
    params = SimulateParams(n_contexts=2, n_simulations=2, max_turns=3, decoding=DecodingParams(temperature=1.0, max_new_tokens=8))
    before = served.health()["stats"]["requests"]
    simulations = run_simulate("zero-shot", params, [REPLAY], END, project / "scrubbed", project / "contexts.parquet",
                               project / "splits.parquet", tiny_model_dir, None, project / "out", project / "out.json",
                               project / "out.resume.json", progress=False, simulator_settings=settings(served.url))
    report = json.loads((project / "out.json").read_text())
    assert report["simulator_backend"] == "openai" and report["served_model"] == "base"
    messages = io.MESSAGES.read(paths.messages_file(project / "out"))
    assert len(simulations) == 4 and (messages["role"] == "user").sum() > 0
    # Every user turn was one request to the server (a turn that is retried sends more).
    user_turns = sum(len({json.loads(m)["user_turn"] for m in group["metadata"]})
                     for _, group in messages[messages["role"] == "user"].groupby("session_id"))
    assert served.health()["stats"]["requests"] - before >= user_turns
