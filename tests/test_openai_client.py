"""The OpenAI-compatible client: protocol, retries with backoff, final errors, and the API key that
never leaks. Against a real (in-test) HTTP server scripted to fail in the ways endpoints fail."""

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dial import openai_client
from dial.openai_client import Completion, EndpointError, backoff_delay, chat_completion

KEY = "sk-test-5e3c7a9b1d"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def reply(content, finish_reason="stop", usage=None):
    def step(handler):
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}
        if usage is not None:
            payload["usage"] = usage
        handler.send_json(200, payload)
    return step


def status(code, message="scripted failure", headers=None):
    return lambda handler: handler.send_json(code, {"error": {"message": message, "type": "scripted"}}, headers)


def raw(body: bytes):
    return lambda handler: handler.send_raw(200, body)


def sleep(seconds):
    def step(handler):
        time.sleep(seconds)
        handler.send_json(200, {"choices": [{"message": {"content": "too late"}}]})
    return step


class _Scripted(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            step = self.server.steps.pop(0) if self.server.steps else reply("default")
        step(self)

    def send_json(self, code, payload, headers=None):
        self.send_raw(code, json.dumps(payload).encode(), headers)

    def send_raw(self, code, body, headers=None):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    server.lock, server.steps, server.requests = threading.Lock(), [], []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(openai_client, "BACKOFF_BASE_S", 0.01)


def call(url, **overrides):
    kwargs = dict(api_key_env="DIAL_TEST_KEY", timeout_s=5.0, max_retries=3, temperature=0.7, max_tokens=32,
                  what="chatbot 'prod' session 's1'")
    kwargs.update(overrides)
    return chat_completion(url, "my-model", MESSAGES, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_protocol_request_and_reply(endpoint, monkeypatch):
    monkeypatch.setenv("DIAL_TEST_KEY", KEY)
    endpoint.steps = [reply("hi there", usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})]
    completion = call(endpoint.url, top_p=0.9, seed=42)
    assert completion == Completion("hi there", "stop", {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}, 1)
    (request,) = endpoint.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    assert request["body"] == {"model": "my-model", "messages": MESSAGES, "temperature": 0.7, "max_tokens": 32,
                               "top_p": 0.9, "seed": 42}


def test_optional_fields_and_key_absent(endpoint, monkeypatch):
    monkeypatch.delenv("DIAL_TEST_KEY", raising=False)
    endpoint.steps = [reply(None, finish_reason="stop")]  # OpenAI may send null content
    completion = call(endpoint.url + "/")  # a trailing slash is fine
    assert completion.text == "" and completion.usage is None
    (request,) = endpoint.requests
    assert request["auth"] is None and "seed" not in request["body"] and "top_p" not in request["body"]


def test_transient_failures_are_retried_until_success(endpoint):
    endpoint.steps = [
        status(500),
        raw(b"<html>bad gateway</html>"),  # not JSON
        raw(json.dumps({"choices": []}).encode()),  # missing fields
        status(429, headers={"Retry-After": "0"}),
        status(503),
        reply("finally"),
    ]
    completion = call(endpoint.url, max_retries=5)
    assert completion.text == "finally" and completion.attempts == 6 and len(endpoint.requests) == 6


def test_gives_up_after_the_retries_naming_what_url_attempts_and_error(endpoint):
    endpoint.steps = [status(502)] * 3
    with pytest.raises(EndpointError) as caught:
        call(endpoint.url, max_retries=2)
    message = str(caught.value)
    assert message.startswith("chatbot 'prod' session 's1': ")
    assert f"{endpoint.url}/chat/completions failed after 3 attempt(s): HTTP 502: scripted failure" in message
    assert caught.value.attempts == 3 and caught.value.status == 502 and len(endpoint.requests) == 3


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(endpoint, code):
    endpoint.steps = [status(code, "nope")]
    with pytest.raises(EndpointError, match=rf"failed after 1 attempt\(s\): HTTP {code}: nope"):
        call(endpoint.url, max_retries=3)
    assert len(endpoint.requests) == 1


def test_timeout_is_retried_then_reported(endpoint):
    endpoint.steps = [sleep(1.5), sleep(1.5)]
    start = time.monotonic()
    with pytest.raises(EndpointError, match=r"failed after 2 attempt\(s\): timed out after 0.3s"):
        call(endpoint.url, timeout_s=0.3, max_retries=1)
    assert time.monotonic() - start < 1.4  # did not wait for the server
    assert len(endpoint.requests) == 2


def test_connection_refused_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as caught:
        call(url, max_retries=2)
    assert f"{url}/chat/completions failed after 3 attempt(s): ConnectionRefusedError" in str(caught.value)
    assert caught.value.status is None


def test_api_key_never_in_errors_reprs_or_logs(endpoint, monkeypatch, caplog):
    """Even when the server echoes the key back in its error bodies."""
    monkeypatch.setenv("DIAL_TEST_KEY", KEY)

    def echo(code):
        return lambda handler: handler.send_json(code, {"error": {"message": f"bad key {handler.headers['Authorization']}"}})

    caplog.set_level(logging.DEBUG)
    endpoint.steps = [echo(500), raw(f"garbage {KEY}".encode()), echo(401)]
    with pytest.raises(EndpointError) as caught:
        call(endpoint.url, max_retries=3)
    assert len(endpoint.requests) == 3 and endpoint.requests[-1]["auth"] == f"Bearer {KEY}"  # it was sent
    texts = [str(caught.value), repr(caught.value), caught.value.last_error, caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records and all(KEY not in text for text in texts)
    assert "HTTP 401: bad key Bearer ***" in str(caught.value)
    assert "$DIAL_TEST_KEY" in str(caught.value)  # names the variable, not its value


def test_key_is_read_at_call_time(endpoint, monkeypatch):
    monkeypatch.delenv("DIAL_TEST_KEY", raising=False)
    call(endpoint.url)
    monkeypatch.setenv("DIAL_TEST_KEY", KEY)
    call(endpoint.url)
    assert [request["auth"] for request in endpoint.requests] == [None, f"Bearer {KEY}"]


def test_backoff_grows_exponentially_with_small_jitter_and_a_cap(monkeypatch):
    monkeypatch.setattr(openai_client, "BACKOFF_BASE_S", 0.5)
    delays = [backoff_delay(retry) for retry in range(1, 10)]
    for retry, delay in enumerate(delays, start=1):
        expected = min(0.5 * 2 ** (retry - 1), openai_client.BACKOFF_MAX_S)
        assert expected <= delay <= expected * (1 + openai_client.BACKOFF_JITTER)
