"""`dial serve`: the OpenAI-compatible HTTP server around a local model, with dynamic batching.

The server runs in-process here (the tiny model, one load for the module); tests/chatbots/
test_openai_chatbot.py drives it as `python -m dial.simulation.serve` (startup line, SIGTERM).
"""

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from dial.errors import DialError
from dial.simulation.serve import DialServer, serve

KEY = "sk-serve-test-3a7d"
MAX_POSITIONS = 512  # the server's context limit here (the tiny model itself allows 16384)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As `--threads 1`: on a busy CPU, torch's spinning worker threads starve the HTTP threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    from dial.simulation.generation import ChatGenerator

    return ChatGenerator.load(tiny_model_dir, precision="fp32", batch_size=8)


def start(generator, **kwargs) -> DialServer:
    server = DialServer(generator, "127.0.0.1", 0, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(generator):
    server = start(generator, model_name="tiny", api_key=KEY, batch_size=8, batch_wait_ms=30, max_positions=MAX_POSITIONS)
    yield server
    server.stop(grace_s=5)


def call(url: str, body=None, key: str | None = KEY, method: str | None = None, raw: bytes | None = None):
    """(status, JSON payload) of one HTTP call."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(server, messages=None, key=KEY, **fields):
    body = {"model": "whatever", "messages": messages or [{"role": "user", "content": "hello, how are you?"}], **fields}
    return call(server.url + "/chat/completions", body, key)


def health(server) -> dict:
    return call(server.url.removesuffix("/v1") + "/health", key=None)[1]


def conversation(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"tell me about my dog {i} " * (i % 3 + 1)}]


def test_chat_completion_response(server, generator):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]
    status, payload = chat(server, messages, temperature=0.8, top_p=0.9, max_tokens=10, seed=11)
    assert status == 200
    assert payload["id"].startswith("chatcmpl-") and payload["object"] == "chat.completion" and payload["model"] == "tiny"
    (choice,) = payload["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = payload["usage"]
    expected_prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi there"}]
    assert usage["prompt_tokens"] == len(generator.prompt_ids([expected_prompt])[0])
    assert 1 <= usage["completion_tokens"] <= 10 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert payload["dial"]["seed"] == 11
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 10


def test_max_tokens_and_finish_reason(server):
    status, payload = chat(server, max_tokens=1, seed=3)
    assert status == 200 and payload["usage"]["completion_tokens"] == 1 and payload["choices"][0]["finish_reason"] == "length"


def test_seeds_reproduce_and_a_counter_seeds_the_rest(server):
    first, again = chat(server, seed=5, max_tokens=16)[1], chat(server, seed=5, max_tokens=16)[1]
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    unseeded = [chat(server, max_tokens=4)[1]["dial"]["seed"] for _ in range(2)]
    assert unseeded[1] == unseeded[0] + 1


def test_models_health_and_auth(server):
    status, models = call(server.url + "/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
    status, payload = call(server.url.removesuffix("/v1") + "/health", key=None)
    assert status == 200 and payload["status"] == "ok" and payload["model"] == "tiny" and "max_batch_size" in payload["stats"]
    for key in (None, "wrong-key"):
        status, payload = chat(server, key=key)
        assert status == 401 and payload["error"]["type"] == "authentication_error"
        assert call(server.url + "/models", key=key)[0] == 401
    assert KEY not in json.dumps(payload)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "m"}', "'messages' is required"),
        (b'{"messages": []}', "'messages' is required"),
        (b'{"messages": [{"role": "tool", "content": "x"}]}', "role must be one of"),
        (b'{"messages": [{"role": "user", "content": {"a": 1}}]}', "content must be a string"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": true}', "streaming is not supported"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n = 1"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "'temperature' must be a number"),
        (b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}', "'max_tokens' must be an integer"),
        (b'{"messages": [{"role": "user", "content": "x"}], "seed": "abc"}', "'seed' must be a number"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 600}', f"context of {MAX_POSITIONS} tokens"),
    ],
)
def test_bad_requests_are_400_with_a_json_error(server, raw, fragment):
    status, payload = call(server.url + "/chat/completions", raw=raw)
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]


def test_unknown_paths_are_404(server):
    assert call(server.url + "/completions", {"prompt": "x"})[0] == 404
    assert call(server.url.removesuffix("/v1") + "/nope")[0] == 404


def test_concurrent_requests_are_batched_and_match_sequential_replies(server):
    fields = dict(temperature=1.0, top_p=0.95, max_tokens=16)
    sequential = [chat(server, conversation(i), seed=i, **fields)[1] for i in range(8)]
    before = health(server)["stats"]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: chat(server, conversation(i), seed=i, **fields)[1], range(8)))
    stats = health(server)["stats"]
    assert stats["completed"] - before["completed"] == 8
    assert stats["batches"] - before["batches"] < 8 and max(r["dial"]["batch_size"] for r in concurrent) > 1
    assert stats["max_batch_size"] > 1 and stats["max_in_flight"] > 1
    # One seed per conversation: a reply does not depend on which requests shared its batch.
    assert [r["choices"][0]["message"]["content"] for r in concurrent] == [r["choices"][0]["message"]["content"] for r in sequential]


def test_batches_group_requests_by_decoding_params(server):
    def one(i):
        temperature = 0.0 if i % 2 else 1.0
        return temperature, chat(server, conversation(i), seed=i, temperature=temperature, max_tokens=8)[1]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(payload["dial"]["batch_size"] <= 4 for _, payload in results)  # never mixes the two groups
    greedy = results[1][1]["choices"][0]["message"]["content"]
    again = chat(server, conversation(1), seed=999, temperature=0.0, max_tokens=8)[1]  # greedy: the seed is moot
    assert again["choices"][0]["message"]["content"] == greedy


def test_graceful_stop_finishes_requests_in_flight(generator):
    server = start(generator, model_name="tiny", batch_wait_ms=0)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, server, temperature=1.0, max_tokens=200, seed=1)
        deadline = time.monotonic() + 30
        while health(server)["stats"]["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.stop(grace_s=30)
        status, payload = pending.result()
    assert status == 200 and payload["usage"]["completion_tokens"] >= 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url.removesuffix("/v1") + "/health", timeout=5)


def test_serve_checks_its_arguments_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(DialError, match="not a directory"):
        serve(tmp_path / "missing", port=0)
    monkeypatch.delenv("DIAL_SERVE_TEST_KEY", raising=False)
    with pytest.raises(DialError, match="DIAL_SERVE_TEST_KEY"):
        serve(tiny_model_dir, port=0, api_key_env="DIAL_SERVE_TEST_KEY")
    with pytest.raises(DialError, match="--precision"):
        serve(tiny_model_dir, port=0, precision="fp8")
