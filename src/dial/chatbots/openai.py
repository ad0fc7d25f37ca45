"""`openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp server,
`dial serve`, hosted APIs) — typically the chatbot a team wants to evaluate.

Each request of a batch is one `/chat/completions` call: the chatbot's system prompt (if any), then
the conversation; the chatbot's decoding params (temperature, top_p, max_new_tokens → max_tokens)
and the request's seed (reduced to 31 bits: llama.cpp reads seeds as uint32 and some APIs reject
64-bit integers). Calls run on a thread pool of `max_concurrency` threads kept for the chatbot's
life (`close()` shuts it down), so at most that many calls are in flight at once.

Replies:

* content that is empty or only whitespace with `finish_reason` "stop" (or an end-of-sequence
  variant, or none at all) means the chatbot chose to say nothing: it ended the conversation
  (`ChatReply(text=None)`, metadata `empty: True`);
* empty content with any other finish reason ("length": the token budget went to hidden reasoning
  or whitespace; "content_filter"; "tool_calls") is not a message and not a choice to end: it is
  a `ChatbotError` naming the finish reason;
* otherwise the text, stripped of surrounding whitespace.

Metadata: `attempts` (1 = no retry), `prompt_tokens` and `completion_tokens` (from `usage`, None
if not sent), `finish_reason`, `empty`. A reply with finish_reason "length" is `truncated` (cut by
max_new_tokens).

Failures (after the client's retries, see `dial.openai_client`) raise `ChatbotError(chatbot,
session, reason)`. When a request of a batch fails, the requests not started yet are skipped (never
sent), the ones in flight are waited for (no call outlives `reply`), and the error is raised for the
first failed request in request order.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Sequence

from dial.chatbots.base import Chatbot, ChatbotError, ChatReply, ChatRequest, chatbot_seed
from dial.errors import DialError
from dial.openai_client import Completion, EndpointError, chat_completion
from dial.params import ChatbotParams

log = logging.getLogger(__name__)

# Finish reasons that mean the model ended its message on its own (TGI used "eos_token").
END_FINISH_REASONS = frozenset({"stop", "eos", "eos_token", None})
SEED_MODULUS = 2**31


class OpenAIChatbot(Chatbot):
    def __init__(self, params: ChatbotParams) -> None:
        if params.backend != "openai":
            raise DialError(f"chatbot {params.name!r}: OpenAIChatbot needs backend 'openai', not {params.backend!r}")
        self.name = params.name
        self.params = params
        if params.api_key_env and not os.environ.get(params.api_key_env):
            log.warning("chatbot %r: environment variable %s is not set: requests go without an API key",
                        params.name, params.api_key_env)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=params.max_concurrency, thread_name_prefix=f"chatbot-{params.name}"
        )

    def __repr__(self) -> str:
        return f"OpenAIChatbot(name={self.name!r}, base_url={self.params.base_url!r}, model={self.params.model!r})"

    def conversation(self, request: ChatRequest) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.params.system_prompt}] if self.params.system_prompt else []
        return system + [{"role": m["role"], "content": m["content"]} for m in request.messages]

    def reply(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        if self._pool is None:
            raise DialError(f"chatbot {self.name!r} is closed")
        failed = threading.Event()  # once a request failed, the ones not started yet are skipped
        futures = [self._pool.submit(self._call, request, failed) for request in requests]
        wait(futures)  # no call of this batch outlives it
        replies = []
        for request, future in zip(requests, futures):
            if future.exception() is not None:
                raise self._error(request, future.exception())
            completion = future.result()
            if completion is not None:  # None: skipped, always after a failure (calls start in order)
                replies.append(self._to_reply(request, completion))
        return replies

    def _call(self, request: ChatRequest, failed: threading.Event) -> Completion | None:
        if failed.is_set():
            return None
        try:
            return self._complete(request)
        except BaseException:
            failed.set()
            raise

    def _complete(self, request: ChatRequest) -> Completion:
        decoding = self.params.decoding
        return chat_completion(
            self.params.base_url,
            self.params.model,
            self.conversation(request),
            api_key_env=self.params.api_key_env or None,
            timeout_s=self.params.timeout_s,
            max_retries=self.params.max_retries,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            max_tokens=decoding.max_new_tokens,
            seed=chatbot_seed(self.name, request.seed) % SEED_MODULUS,  # distinct streams per chatbot, as hf
            what=f"chatbot {self.name!r} session {request.session_id!r}",
        )

    def _error(self, request: ChatRequest, exc: BaseException) -> ChatbotError:
        reason = exc.detail if isinstance(exc, EndpointError) else f"{type(exc).__name__}: {exc}"
        error = ChatbotError(self.name, request.session_id, reason)
        error.__cause__ = exc
        return error

    def _to_reply(self, request: ChatRequest, completion: Completion) -> ChatReply:
        text = completion.text.strip()
        usage = completion.usage or {}
        metadata = {
            "attempts": completion.attempts,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "finish_reason": completion.finish_reason,
            "empty": not text,
        }
        if not text:
            if completion.finish_reason not in END_FINISH_REASONS:
                raise ChatbotError(
                    self.name,
                    request.session_id,
                    f"empty reply with finish_reason {completion.finish_reason!r} "
                    f"(max_new_tokens={self.params.decoding.max_new_tokens})",
                )
            return ChatReply(text=None, metadata=metadata)
        return ChatReply(text=text, metadata=metadata, truncated=completion.finish_reason == "length")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
