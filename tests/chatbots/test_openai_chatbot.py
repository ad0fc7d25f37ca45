"""The `openai` chatbot backend against real servers, no mocks:

* `python -m dial.simulation.serve` with the tiny model, started once for the module (it boots in the
  background while the failure-mode tests run against small scripted in-test servers);
* scripted `http.server` endpoints for the failures: server down, timeouts, 5xx / bad JSON, 401.
"""

import json
import logging
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_helpers import ServeProcess

from dial import openai_client
from dial.chatbots import make_chatbots
from dial.chatbots.base import ChatbotError, ChatRequest, chatbot_seed
from dial.chatbots.openai import OpenAIChatbot
from dial.errors import DialError
from dial.params import ChatbotParams, DecodingParams

CONCURRENCY = 3  # every chatbot talking to the tiny-model server uses this: its peak in-flight count
KEY = "sk-chatbot-test-81f2e0"


@pytest.fixture(scope="module", autouse=True)
def tiny_server(tiny_model_dir, tmp_path_factory):
    server = ServeProcess(tiny_model_dir, tmp_path_factory.mktemp("serve") / "serve.log", "--batch-wait-ms", "40")
    yield server
    server.stop()


def chatbot(url, **overrides) -> OpenAIChatbot:
    fields = dict(name="prod", backend="openai", base_url=url, model="tiny", max_concurrency=CONCURRENCY,
                  timeout_s=30, max_retries=1, decoding=DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=12))
    fields.update(overrides)
    return OpenAIChatbot(ChatbotParams(**fields))


def request(session_id: str, text: str = "hello, how are you today?", seed: int = 7) -> ChatRequest:
    return ChatRequest(session_id=session_id, real_session_id=f"real-{session_id}", seed=seed,
                       messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "I am fine."},
                                 {"role": "user", "content": f"{text} ({session_id})"}])


# --------------------------------------------------------------------------------------------
# Scripted in-test endpoints


class _Scripted(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
            index = len(self.server.requests) - 1
        self.server.respond(self, body, index)

    def send_json(self, code, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_reply(self, content, finish_reason="stop"):
        self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})

    def log_message(self, *args):
        pass


@pytest.fixture()
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    server.lock, server.requests = threading.Lock(), []
    server.respond = lambda handler, body, index: handler.send_reply("ok")
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(openai_client, "BACKOFF_BASE_S", 0.02)


def last_user(body) -> str:
    return body["messages"][-1]["content"]


# --------------------------------------------------------------------------------------------
# Failure modes (run first, while the tiny-model server boots)


def test_server_down_retries_then_names_chatbot_and_session():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bot = chatbot(f"http://127.0.0.1:{port}/v1", max_retries=2)
    try:
        with pytest.raises(ChatbotError) as caught:
            bot.reply([request("s0"), request("s1")])
    finally:
        bot.close()
    error = caught.value
    assert (error.chatbot, error.session_id) == ("prod", "s0")
    assert str(error).startswith("chatbot 'prod' failed for session 's0': ")
    assert f"127.0.0.1:{port}/v1/chat/completions failed after 3 attempt(s): ConnectionRefusedError" in str(error)


def test_timeout_retries_then_errors(scripted):
    def slow(handler, body, index):
        time.sleep(1.0)
        handler.send_reply("too late")

    scripted.respond = slow
    bot = chatbot(scripted.url, timeout_s=0.25, max_retries=1)
    try:
        with pytest.raises(ChatbotError, match=r"session 's0'.*failed after 2 attempt\(s\): timed out after 0.25s"):
            bot.reply([request("s0")])
    finally:
        bot.close()
    assert len(scripted.requests) == 2


def test_5xx_and_bad_json_are_retried_and_succeed(scripted):
    def flaky(handler, body, index):
        if index == 0:
            handler.send_json(500, {"error": {"message": "overloaded"}})
        elif index == 1:
            raw = b"{not json"
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw)
        else:
            handler.send_reply("  finally a reply \n")

    scripted.respond = flaky
    bot = chatbot(scripted.url, max_retries=3)
    try:
        (reply,) = bot.reply([request("s0")])
    finally:
        bot.close()
    assert reply.text == "finally a reply"
    assert reply.metadata["attempts"] == 3 and reply.metadata["completion_tokens"] == 2
    assert len(scripted.requests) == 3


def test_401_is_not_retried_and_the_key_never_leaks(scripted, monkeypatch, caplog):
    monkeypatch.setenv("DIAL_CHATBOT_KEY", KEY)
    scripted.respond = lambda handler, body, index: handler.send_json(
        401, {"error": {"message": f"invalid key {handler.headers['Authorization']}"}})
    caplog.set_level(logging.DEBUG)
    bot = chatbot(scripted.url, api_key_env="DIAL_CHATBOT_KEY", max_retries=3)
    try:
        with pytest.raises(ChatbotError) as caught:
            bot.reply([request("s0")])
    finally:
        bot.close()
    assert len(scripted.requests) == 1 and scripted.requests[0]["auth"] == f"Bearer {KEY}"
    error = caught.value
    assert "failed after 1 attempt(s): HTTP 401" in str(error) and "$DIAL_CHATBOT_KEY" in str(error)
    texts = [str(error), repr(error), error.reason, repr(bot), repr(bot.params), str(error.__cause__), caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    assert all(KEY not in text for text in texts)


def test_first_failure_in_request_order_after_in_flight_calls_finish(scripted):
    """s0 fails slowly, s1 fails at once: the error names s0, raised only once s0 is done; the
    requests not started yet (s2, s3) are never sent."""

    def script(handler, body, index):
        text = last_user(body)
        if "(s0)" in text:
            time.sleep(0.4)
        handler.send_json(400 if "(s0)" in text or "(s1)" in text else 200,
                          {"error": {"message": "rejected"}} if "(s0)" in text or "(s1)" in text else
                          {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]})

    scripted.respond = script
    bot = chatbot(scripted.url, max_concurrency=2)
    try:
        start = time.monotonic()
        with pytest.raises(ChatbotError) as caught:
            bot.reply([request(f"s{i}") for i in range(4)])
        assert time.monotonic() - start >= 0.4
    finally:
        bot.close()
    assert caught.value.session_id == "s0"
    assert sorted(last_user(r["body"])[-4:] for r in scripted.requests) == ["(s0)", "(s1)"]


@pytest.mark.parametrize("finish_reason, truncated", [("length", True), ("stop", False), (None, False)])
def test_a_reply_cut_by_max_tokens_is_marked_truncated(scripted, finish_reason, truncated):
    scripted.respond = lambda handler, body, index: handler.send_reply("I hear you, and it makes", finish_reason)
    bot = chatbot(scripted.url)
    try:
        (reply,) = bot.reply([request("s0")])
    finally:
        bot.close()
    assert reply.text == "I hear you, and it makes" and reply.truncated is truncated


def test_empty_reply_ends_the_conversation_only_when_stopped(scripted):
    scripted.respond = lambda handler, body, index: handler.send_reply(
        " \n" if "(s0)" in last_user(body) else "", "stop" if "(s0)" in last_user(body) else "length")
    bot = chatbot(scripted.url)
    try:
        (ended,) = bot.reply([request("s0")])
        assert ended.text is None and ended.metadata["empty"] and ended.metadata["finish_reason"] == "stop"
        with pytest.raises(ChatbotError, match=r"session 's1'.*empty reply with finish_reason 'length'"):
            bot.reply([request("s1")])
    finally:
        bot.close()


def test_request_body_and_closed_chatbot(scripted):
    bot = chatbot(scripted.url, system_prompt="You are terse.", decoding=DecodingParams(temperature=0.3, top_p=0.8, max_new_tokens=5))
    bot.reply([request("s0", seed=2**40 + 5)])
    bot.close()
    body = scripted.requests[0]["body"]
    assert body["model"] == "tiny" and body["temperature"] == 0.3 and body["top_p"] == 0.8 and body["max_tokens"] == 5
    # Per-chatbot stream (as the hf backend), reduced to 31 bits for llama.cpp and strict APIs.
    assert body["seed"] == chatbot_seed(bot.name, 2**40 + 5) % 2**31
    assert body["messages"][0] == {"role": "system", "content": "You are terse."} and len(body["messages"]) == 4
    with pytest.raises(DialError, match="closed"):
        bot.reply([request("s0")])


# --------------------------------------------------------------------------------------------
# Against the tiny model served by `python -m dial.simulation.serve`


def test_make_chatbots_builds_the_openai_backend(tiny_server):
    (bot,) = make_chatbots([ChatbotParams(name="prod", backend="openai", base_url=tiny_server.url, model="tiny",
                                          max_concurrency=CONCURRENCY)], base_model_dir=None, real_partner_turns={})
    try:
        assert isinstance(bot, OpenAIChatbot)
        (reply,) = bot.reply([request("s0")])
        assert reply.metadata["attempts"] == 1 and reply.metadata["completion_tokens"] > 0
    finally:
        bot.close()


def test_batch_of_sessions_seeded_and_reproducible(tiny_server):
    bot = chatbot(tiny_server.url)
    requests = [request(f"s{i}", seed=100 + i) for i in range(6)]
    try:
        first = bot.reply(requests)
        again = bot.reply(requests)
        reseeded = bot.reply([request(f"s{i}", seed=200 + i) for i in range(6)])
    finally:
        bot.close()
    assert len(first) == 6
    assert all(reply.metadata["attempts"] == 1 and reply.metadata["completion_tokens"] >= 1 for reply in first)
    assert sum(reply.text is not None for reply in first) >= 5  # a random tiny model may end a session at once
    assert [r.text for r in first] == [r.text for r in again]  # same seeds, same replies
    assert [r.text for r in first] != [r.text for r in reseeded]


def test_system_prompt_is_sent(tiny_server, tiny_tokenizer):
    system = "You are a warm, supportive listener."
    plain, prompted = chatbot(tiny_server.url), chatbot(tiny_server.url, system_prompt=system)
    try:
        (without,), (with_system,) = plain.reply([request("s0")]), prompted.reply([request("s0")])
    finally:
        plain.close()
        prompted.close()
    conversation = request("s0").messages
    n_tokens = [
        len(tiny_tokenizer(tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"])
        for messages in (conversation, [{"role": "system", "content": system}] + conversation)
    ]
    assert n_tokens[1] > n_tokens[0]
    assert (without.metadata["prompt_tokens"], with_system.metadata["prompt_tokens"]) == tuple(n_tokens)


def test_concurrency_is_bounded_and_the_server_batches(tiny_server):
    bot = chatbot(tiny_server.url, decoding=DecodingParams(temperature=1.0, top_p=1.0, max_new_tokens=24))
    before = tiny_server.health()["stats"]
    try:
        replies = bot.reply([request(f"s{i}", seed=i) for i in range(12)])
    finally:
        bot.close()
    stats = tiny_server.health()["stats"]
    assert len(replies) == 12 and stats["completed"] - before["completed"] == 12
    # Every chatbot of this module uses CONCURRENCY threads: the server never saw more at once...
    assert 2 <= stats["max_in_flight"] <= CONCURRENCY
    # ... and served concurrent requests together: fewer generate calls than requests.
    assert stats["max_batch_size"] >= 2
    assert stats["batches"] - before["batches"] < 12


def test_server_stops_cleanly_on_sigterm(tiny_server):
    """Last test of the module: SIGTERM ends the server with exit code 0."""
    tiny_server.url  # noqa: B018 (started)
    assert tiny_server.stop() == 0
    assert "SIGTERM received: stopping" in tiny_server.log_path.read_text()
