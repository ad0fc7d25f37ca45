"""Summaries ground a session without quoting it; the LLM summariser speaks the OpenAI protocol."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dial.errors import DialError
from dial.params import ContextParams, OpenAIEndpointParams
from dial.summarise import (
    FALLBACK_SUMMARY,
    LocalSummariser,
    OpenAISummariser,
    SessionText,
    make_summariser,
    states_structure,
    verbatim_leak,
)

VOCAB = "the a user writes short long messages conversation of from them main topics pizza exam dog i feel so tired work sleep".split()
message = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=14).map(" ".join)
session = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), message), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(messages=session, topic=st.one_of(st.none(), message))
def test_local_summary_never_quotes_a_user_message(messages, topic):
    text = SessionText(tuple(messages), topic)
    summary = LocalSummariser().summarise(text)
    assert summary.strip()
    assert not verbatim_leak(summary, text.user_messages)


def test_local_summary_is_deterministic_and_describes_topics_and_tone():
    text = SessionText((("user", "My chemistry exam is tomorrow and I cannot sleep"), ("assistant", "That sounds stressful."),
                        ("user", "chemistry always scares me, I am so stressed"), ("user", "what should I do?")))
    first, second = LocalSummariser().summarise(text), LocalSummariser().summarise(text)
    assert first == second
    assert "chemistry" in first and "tone is negative (stressed)" in first and "asks questions" in first


@settings(max_examples=300, deadline=None)
@given(messages=session)
def test_local_summary_never_states_the_structure(messages):
    summary = LocalSummariser().summarise(SessionText(tuple(messages)))
    assert not states_structure(summary)
    assert not any(character.isdigit() for character in summary)  # no count or length of any kind


def test_local_summary_is_the_same_for_a_burst_and_for_strict_turns():
    """Real users send bursts, simulated users (today) cannot: the summary both are grounded on
    must not tell them apart, so the same words split differently give the same summary."""
    burst = SessionText((("assistant", "hi there, how was the weekend"), ("user", "honestly awful!"),
                         ("user", "my dog was sick"), ("user", "is that normal?"), ("assistant", "oh no, poor dog")))
    strict = SessionText((("user", "honestly awful! my dog was sick is that normal?"),
                          ("assistant", "hi there, how was the weekend oh no, poor dog")))
    summary = LocalSummariser().summarise(burst)
    assert summary == LocalSummariser().summarise(strict)
    assert "dog" in summary and "exclamation" in summary


@pytest.mark.parametrize(
    "summary",
    ["A conversation of 12 messages.", "The user sends several short messages in a row.", "They wrote two long replies.",
     "The user sent the last message.", "About 5 words per message."],
)
def test_states_structure_catches_counts_lengths_bursts_and_last_speaker(summary):
    assert states_structure(summary)


def test_states_structure_lets_topics_and_tone_through():
    assert not states_structure("Main topics: exam, sleep. The user's tone is negative (tired); the user asks questions.")


def test_verbatim_leak_definition():
    user = ["I think my boss hates me a lot"]
    assert verbatim_leak("Summary: I think my boss hates me a lot.", user)  # whole message
    assert verbatim_leak("they said think my boss hates me a and left", user)  # 6-word run
    assert not verbatim_leak("The user feels their boss dislikes them.", user)
    assert not verbatim_leak("ok sure", ["ok sure"])  # too short to count as a quote
    assert not verbatim_leak(FALLBACK_SUMMARY, ["session summary unavailable today ok"])


class _Endpoint(BaseHTTPRequestHandler):
    replies: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        status, content = type(self).replies.pop(0)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    _Endpoint.replies, _Endpoint.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Endpoint
    server.shutdown()


def test_openai_summariser_protocol_retry_and_key(endpoint, monkeypatch):
    url, handler = endpoint
    monkeypatch.setenv("MY_KEY", "secret-123")
    handler.replies = [(500, "boom"), (200, "The user is anxious about an exam and writes tersely.")]
    summariser = OpenAISummariser(OpenAIEndpointParams(base_url=url, model="tiny", api_key_env="MY_KEY", max_retries=2))
    summary = summariser.summarise(SessionText((("user", "exam tomorrow help"), ("assistant", "ok")), "exams"))
    assert summary == "The user is anxious about an exam and writes tersely."
    assert len(handler.requests) == 2  # one retry after the 500
    request = handler.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret-123"
    assert request["body"]["model"] == "tiny" and "exam tomorrow help" in request["body"]["messages"][1]["content"]
    system_prompt = request["body"]["messages"][0]["content"]
    assert "topics" in system_prompt and "tone" in system_prompt and "Never describe the conversation's structure" in system_prompt


def test_openai_summariser_falls_back_when_it_states_the_structure(endpoint):
    url, handler = endpoint
    handler.replies = [(200, "The user is anxious about exams and sends 3 messages in a row.")]
    summariser = OpenAISummariser(OpenAIEndpointParams(base_url=url, model="tiny"))
    summary = summariser.summarise(SessionText((("user", "exam"), ("user", "tomorrow"), ("user", "help"))))
    assert summary == LocalSummariser().summarise(SessionText((("user", "exam"), ("user", "tomorrow"), ("user", "help"))))
    assert summariser.fallbacks == 1


def test_openai_summariser_falls_back_when_it_quotes(endpoint):
    url, handler = endpoint
    quote = "i have been crying every night since she left"
    handler.replies = [(200, f"The user says: {quote}.")]
    summariser = OpenAISummariser(OpenAIEndpointParams(base_url=url, model="tiny"))
    summary = summariser.summarise(SessionText((("user", quote),)))
    assert not verbatim_leak(summary, [quote]) and summariser.fallbacks == 1


def test_openai_summariser_clear_error_when_down():
    summariser = OpenAISummariser(OpenAIEndpointParams(base_url="http://127.0.0.1:9/v1", model="m", max_retries=0, timeout_s=2))
    with pytest.raises(DialError, match=r"127.0.0.1:9/v1/chat/completions failed after 1 attempt"):
        summariser.summarise(SessionText((("user", "hi"),)))


def test_make_summariser_requires_model_for_openai():
    assert isinstance(make_summariser(ContextParams()), LocalSummariser)
    with pytest.raises(DialError, match="context.openai.model"):
        make_summariser(ContextParams(summariser="openai"))
