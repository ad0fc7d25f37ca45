"""One client for OpenAI-compatible `/chat/completions` endpoints (vLLM, TGI, llama.cpp server,
`dial serve`, hosted APIs), used by the `openai` chatbot backend and the LLM summariser.

Standard library only (urllib). A call is retried with exponential backoff plus a little jitter on
what may fix itself: connection errors, timeouts, HTTP 429 and 5xx, and malformed responses (not
JSON, or without `choices[0].message.content`). Other 4xx are final: a wrong key or a bad request
will not fix itself. After the last attempt an `EndpointError` names what was being done (`what`,
e.g. "chatbot 'prod' session 's1'"), the URL, the number of attempts and the last error.

The API key is read from the environment variable named by `api_key_env` at call time; it is sent
only in the `Authorization` header and never appears in errors, logs or reprs (error bodies that
echo it are redacted).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

from dial.errors import DialError

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5  # delay before the first retry; doubles each retry
BACKOFF_MAX_S = 10.0
BACKOFF_JITTER = 0.1  # up to +10% of the delay, so concurrent callers do not retry in lockstep
RETRY_AFTER_MAX_S = 60.0  # a server's Retry-After (on 429/503) is honoured up to this
ERROR_BODY_CHARS = 300  # of an error response's body quoted in the error


class EndpointError(DialError):
    """An endpoint call failed after its retries (or with a final 4xx)."""

    def __init__(self, what: str, url: str, attempts: int, last_error: str, status: int | None = None) -> None:
        self.what = what
        self.url = url
        self.attempts = attempts
        self.last_error = last_error
        self.status = status  # HTTP status of the last attempt, if it got one
        super().__init__(f"{what}: {self.detail}")

    @property
    def detail(self) -> str:
        """The message without `what` (for callers that name the context themselves)."""
        return f"{self.url} failed after {self.attempts} attempt(s): {self.last_error}"


@dataclass(frozen=True)
class Completion:
    text: str  # choices[0].message.content ("" when the endpoint sent null)
    finish_reason: str | None  # "stop", "length", ... as the endpoint reported it
    usage: dict[str, Any] | None  # prompt_tokens / completion_tokens / total_tokens, if sent
    attempts: int  # 1 = no retry was needed


class _Retryable(Exception):
    """One attempt failed in a way that may fix itself."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _Final(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def backoff_delay(retry: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): 0.5, 1, 2, 4, ... capped, + jitter."""
    delay = min(BACKOFF_BASE_S * 2.0 ** (retry - 1), BACKOFF_MAX_S)
    return delay * (1.0 + BACKOFF_JITTER * (rng or random).random())


def chat_completion(
    base_url: str,
    model: str,
    messages: Sequence[dict[str, str]],
    *,
    api_key_env: str | None,
    timeout_s: float,
    max_retries: int,
    temperature: float,
    max_tokens: int,
    top_p: float | None = None,
    seed: int | None = None,
    what: str,
) -> Completion:
    """POST `{base_url}/chat/completions` and return the first choice (retried; see module doc).

    `top_p` and `seed` are sent only when given (vLLM, llama.cpp and OpenAI honour `seed`).
    Raises `EndpointError` naming `what`, the URL, the attempts and the last error.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    payload: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    if top_p is not None:
        payload["top_p"] = top_p
    if seed is not None:
        payload["seed"] = seed
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    api_key = os.environ.get(api_key_env, "") if api_key_env else ""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    attempts, last_error, status = 0, "", None
    for attempt in range(max_retries + 1):
        attempts = attempt + 1
        try:
            return _attempt(url, body, headers, timeout_s, attempts, api_key, api_key_env)
        except _Final as exc:
            last_error, status = str(exc), exc.status
            break
        except _Retryable as exc:
            last_error, status = str(exc), exc.status
            if attempt == max_retries:
                break
            delay = backoff_delay(attempt + 1)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, RETRY_AFTER_MAX_S))
            log.warning("%s: %s attempt %d/%d failed: %s (retrying in %.2fs)",
                        what, url, attempts, max_retries + 1, last_error, delay)
            time.sleep(delay)
    log.warning("%s: %s failed after %d attempt(s): %s", what, url, attempts, last_error)
    raise EndpointError(what, url, attempts, last_error, status)


def _attempt(url: str, body: bytes, headers: dict[str, str], timeout_s: float, attempts: int,
             api_key: str, api_key_env: str | None) -> Completion:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = _redact(_error_body(exc), api_key)
        message = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if exc.code == 429 or exc.code >= 500:
            raise _Retryable(message, exc.code, _retry_after(exc)) from None
        if exc.code in (401, 403):
            hint = f"check the key in ${api_key_env}" if api_key else (
                f"${api_key_env} is not set or empty" if api_key_env else "no api_key_env configured")
            message += f" ({hint})"
        raise _Final(message, exc.code) from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            raise _Retryable(f"timed out after {timeout_s:g}s") from None
        raise _Retryable(_redact(f"{type(reason).__name__}: {reason}", api_key)) from None
    try:
        payload = json.loads(raw.decode("utf-8"))
        choice = payload["choices"][0]
        content = choice["message"]["content"]
        if content is not None and not isinstance(content, str):
            raise TypeError(f"content is {type(content).__name__}, not a string")
        usage = payload.get("usage")
        return Completion(
            text=content or "",
            finish_reason=choice.get("finish_reason"),
            usage=usage if isinstance(usage, dict) else None,
            attempts=attempts,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        snippet = _redact(raw[:ERROR_BODY_CHARS].decode("utf-8", errors="replace"), api_key)
        raise _Retryable(f"malformed response ({type(exc).__name__}: {_redact(str(exc), api_key)}): {snippet!r}") from None


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()[: ERROR_BODY_CHARS * 4].decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 (a broken error body must not hide the status)
        return ""
    try:  # OpenAI style: {"error": {"message": ...}}
        error = json.loads(raw).get("error")
        if isinstance(error, dict) and error.get("message"):
            raw = str(error["message"])
        elif isinstance(error, str):
            raw = error
    except (ValueError, AttributeError):
        pass
    raw = " ".join(raw.split())
    return raw[:ERROR_BODY_CHARS] + ("..." if len(raw) > ERROR_BODY_CHARS else "")


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "***") if api_key else text
