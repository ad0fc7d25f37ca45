"""`dial serve`: expose a local chat model (a checkpoint folder, optionally + a LoRA adapter) as a
small OpenAI-compatible HTTP server — e.g. to evaluate a fine-tuned chatbot with the `openai`
backend, or to give other tools the simulator itself.

    python -m dial.simulation.serve --model-dir models/base --port 8000
    -> serving base on http://127.0.0.1:8000/v1

Endpoints:

* `POST /v1/chat/completions`: `messages` (system/user/assistant; content a string or a list of
  text parts), `temperature` (default 1), `top_p` (default 1), `max_tokens` (or
  `max_completion_tokens`; default 256), `seed`, `model` (accepted, not checked, unless
  `--strict-model-name`: then another name is a 404, as with vLLM). Returns the
  standard JSON (`choices[0].message.content`, `finish_reason` "stop" or "length", `usage`) plus a
  `dial` object: the seed used and the size of the batch the request was generated in. Streaming and
  `n` > 1 are not supported (HTTP 400); other fields (`stop`, penalties, ...) are ignored.
* `GET /v1/models`: the one model.
* `GET /health`: status and counters (requests, batches, batch sizes, requests in flight and their
  peak); never needs the API key.

Dynamic batching: request threads put their work on a queue; one worker thread takes the first
waiting request, collects more for up to `batch_wait_ms` (default 10) until `batch_size`, groups
them by decoding params (temperature, top_p, max_tokens) and calls `ChatGenerator.generate` once
per group. Concurrent clients are therefore served together. A request without `seed` gets the
next value of a counter (so a run is reproducible given the arrival order); the same seed and
messages give the same reply (up to float rounding of batch padding, see `dial.simulation.generation`).

Errors are JSON `{"error": {"message", "type"}}`: 400 for bad JSON or fields (or a prompt that does
not fit the model's context), 401 without `Authorization: Bearer <key>` when `--api-key-env` names
a variable holding a key, 404 for unknown paths, 500 when generation fails, 503 while stopping.
SIGTERM / SIGINT stop gracefully: no new connections, requests in flight are finished (up to 30 s).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from pydantic import ValidationError

from dial.errors import DialError
from dial.params import DecodingParams

if TYPE_CHECKING:
    from dial.simulation.generation import ChatGenerator, Generated

log = logging.getLogger("dial.simulation.serve")  # not __main__ under `python -m dial.simulation.serve`

DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 8 * 1024 * 1024
SHUTDOWN_GRACE_S = 30.0
PRECISIONS = ("auto", "bf16", "fp32")
ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request that cannot be served; becomes an HTTP error with a JSON body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Dynamic batching


@dataclass
class _Work:
    messages: list[dict[str, str]]
    decoding: DecodingParams
    seed: int
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Result:
    generated: "Generated"
    prompt_tokens: int
    seed: int
    batch_size: int  # requests generated together with this one (same decoding params)


_STOP = object()


class Stats:
    """Counters for /health (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests = 0  # chat completion requests received
        self.completed = 0
        self.failed = 0
        self.in_flight = 0  # chat completion requests being handled now
        self.max_in_flight = 0
        self.batches = 0  # ChatGenerator.generate calls
        self.max_batch_size = 0
        self.batch_sizes: dict[int, int] = {}
        self.generated_tokens = 0
        self.open_connections = 0  # any request, for graceful shutdown

    def request_started(self) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def request_finished(self, ok: bool) -> None:
        with self.lock:
            self.in_flight -= 1
            if ok:
                self.completed += 1
            else:
                self.failed += 1

    def batch(self, size: int, tokens: int) -> None:
        with self.lock:
            self.batches += 1
            self.max_batch_size = max(self.max_batch_size, size)
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
            self.generated_tokens += tokens

    def connection(self, delta: int) -> None:
        with self.lock:
            self.open_connections += delta

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "failed": self.failed,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "batches": self.batches,
                "max_batch_size": self.max_batch_size,
                "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
                "generated_tokens": self.generated_tokens,
                "uptime_s": round(time.time() - self.started, 3),
            }


class BatchingEngine:
    """One worker thread that serves queued requests in batches (see the module doc)."""

    def __init__(self, generator: "ChatGenerator", batch_size: int, batch_wait_ms: float, stats: Stats,
                 max_positions: int | None = None, first_seed: int = 0) -> None:
        if batch_size < 1:
            raise DialError(f"batch_size must be >= 1, got {batch_size}")
        if batch_wait_ms < 0:
            raise DialError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        self.generator = generator
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.stats = stats
        self.max_positions = max_positions
        self._queue: queue.Queue = queue.Queue()
        self._seed_lock = threading.Lock()
        self._next_seed = first_seed
        self._closed = False
        self._submit_lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="dial-serve-batcher", daemon=True)
        self._worker.start()

    def next_seed(self) -> int:
        with self._seed_lock:
            seed, self._next_seed = self._next_seed, self._next_seed + 1
            return seed

    def submit(self, messages: list[dict[str, str]], decoding: DecodingParams, seed: int | None) -> Future:
        """Queue one conversation; the future's result is a `Result` (or a `RequestError`)."""
        work = _Work(messages, decoding, self.next_seed() if seed is None else seed)
        with self._submit_lock:  # nothing is queued behind the stop marker
            if self._closed:
                work.future.set_exception(RequestError(503, "server is shutting down", "unavailable"))
            else:
                self._queue.put(work)
        return work.future

    def close(self, timeout: float = SHUTDOWN_GRACE_S) -> None:
        """Finish what is queued, stop the worker; anything left fails with 503."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            if work is not _STOP and not work.future.done():
                work.future.set_exception(RequestError(503, "server is shutting down", "unavailable"))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:  # after the deadline, still take what is already waiting
                    work = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if work is _STOP:
                    stop = True
                    break
                batch.append(work)
            self._serve(batch)
            if stop:
                return

    def _serve(self, batch: list[_Work]) -> None:
        groups: dict[tuple, list[_Work]] = {}
        for work in batch:
            key = (work.decoding.temperature, work.decoding.top_p, work.decoding.max_new_tokens)
            groups.setdefault(key, []).append(work)
        for group in groups.values():
            try:
                self._generate(group)
            except BaseException as exc:  # noqa: BLE001 (the worker must survive and answer everyone)
                log.exception("generation failed for a batch of %d", len(group))
                for work in group:
                    if not work.future.done():
                        work.future.set_exception(RequestError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error"))

    def _generate(self, group: list[_Work]) -> None:
        ready: list[tuple[_Work, int]] = []
        for work in group:  # one at a time: a bad conversation fails alone
            try:
                n_prompt = len(self.generator.prompt_ids([work.messages])[0])
            except Exception as exc:  # noqa: BLE001 (e.g. a template that rejects the role order)
                work.future.set_exception(RequestError(400, f"chat template failed: {exc}"))
                continue
            needed = n_prompt + work.decoding.max_new_tokens
            if self.max_positions is not None and needed > self.max_positions:
                work.future.set_exception(RequestError(
                    400, f"prompt ({n_prompt} tokens) + max_tokens ({work.decoding.max_new_tokens}) exceeds the "
                         f"model's context of {self.max_positions} tokens"))
                continue
            ready.append((work, n_prompt))
        if not ready:
            return
        generated = self.generator.generate(
            [work.messages for work, _ in ready], ready[0][0].decoding, [work.seed for work, _ in ready]
        )
        self.stats.batch(len(ready), sum(g.n_tokens for g in generated))
        for (work, n_prompt), result in zip(ready, generated):
            work.future.set_result(Result(result, n_prompt, work.seed, len(ready)))


# --------------------------------------------------------------------------------------------
# HTTP


def parse_chat_request(body: bytes) -> tuple[list[dict[str, str]], DecodingParams, int | None]:
    """(messages, decoding, seed) of a chat-completions body; RequestError(400) when invalid."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object")
    if payload.get("stream"):
        raise RequestError(400, "streaming is not supported (send stream: false)")
    if payload.get("n", 1) != 1:
        raise RequestError(400, "only n = 1 is supported")
    raw_messages = payload.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError(400, "'messages' is required: a non-empty list of {role, content}")
    messages = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}")
        messages.append({"role": message["role"], "content": _content_text(message.get("content"), i)})
    max_tokens = payload.get("max_tokens", payload.get("max_completion_tokens"))
    seed = payload.get("seed")
    for name, value in (("temperature", payload.get("temperature")), ("top_p", payload.get("top_p")),
                        ("max_tokens", max_tokens), ("seed", seed)):
        if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
            raise RequestError(400, f"'{name}' must be a number")
    if seed is not None and not isinstance(seed, int):
        raise RequestError(400, "'seed' must be an integer")
    if max_tokens is not None and not float(max_tokens).is_integer():
        raise RequestError(400, "'max_tokens' must be an integer")
    try:
        decoding = DecodingParams(
            temperature=1.0 if payload.get("temperature") is None else payload["temperature"],
            top_p=1.0 if payload.get("top_p") is None else payload["top_p"],
            max_new_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in exc.errors())
        raise RequestError(400, problems.replace("max_new_tokens", "max_tokens")) from None
    return messages, decoding, seed


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                         and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise RequestError(400, f"messages[{index}]: content must be a string or a list of text parts")


class DialHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, engine: BatchingEngine, stats: Stats, model_name: str, api_key: str | None,
                 strict_model_name: bool = False) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.engine = engine
        self.stats = stats
        self.model_name = model_name
        self.strict_model_name = strict_model_name
        self.api_key = api_key
        self.created = int(time.time())
        self.stopping = False

    def process_request(self, request, client_address) -> None:
        self.stats.connection(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.stats.connection(-1)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.stats.connection(-1)


class _Handler(BaseHTTPRequestHandler):
    server: DialHTTPServer
    server_version = "dial-serve/0.1"
    timeout = 60  # seconds a client may take to send its request

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "stopping" if self.server.stopping else "ok",
                             "model": self.server.model_name, "stats": self.server.stats.snapshot()})
        elif path == "/v1/models":
            if self._authorised():
                self._send(200, {"object": "list", "data": [
                    {"id": self.server.model_name, "object": "model", "created": self.server.created, "owned_by": "dial"}]})
        else:
            self._error(RequestError(404, f"no route for GET {path}", "not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        try:  # read the body first: answering before it is read can reset the connection
            body = self._body()
        except RequestError as exc:
            self.close_connection = True
            self._error(exc)
            return
        if path != "/v1/chat/completions":
            self._error(RequestError(404, f"no route for POST {path}", "not_found_error"))
            return
        if not self._authorised():
            return
        self.server.stats.request_started()
        ok = False
        try:
            messages, decoding, seed = parse_chat_request(body)
            self._check_model(body)
            result: Result = self.server.engine.submit(messages, decoding, seed).result()
            self._send(200, self._completion(result))
            ok = True
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # noqa: BLE001
            log.exception("chat completion failed")
            self._error(RequestError(500, f"{type(exc).__name__}: {exc}", "server_error"))
        finally:
            self.server.stats.request_finished(ok)

    def _check_model(self, body: bytes) -> None:
        """With --strict-model-name, a request for another model is a 404, as vLLM answers a
        request for an adapter it has not loaded."""
        if not self.server.strict_model_name:
            return
        requested = json.loads(body.decode("utf-8")).get("model")
        if requested != self.server.model_name:
            raise RequestError(404, f"The model `{requested}` does not exist (serving `{self.server.model_name}`).", "model_not_found")

    def _completion(self, result: Result) -> dict[str, Any]:
        generated = result.generated
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generated.text},
                "finish_reason": "length" if generated.hit_max_tokens else "stop",
                "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": generated.n_tokens,
                "total_tokens": result.prompt_tokens + generated.n_tokens,
            },
            "dial": {"seed": result.seed, "batch_size": result.batch_size},
        }

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "Content-Length is required")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))

    def _authorised(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return True
        self._error(RequestError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                                 "authentication_error"), {"WWW-Authenticate": "Bearer"})
        return False

    def _error(self, exc: RequestError, headers: dict[str, str] | None = None) -> None:
        self._send(exc.status, {"error": {"message": exc.message, "type": exc.kind, "code": exc.status}}, headers)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client %s went away before its response", self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server API)
        log.debug("%s %s", self.client_address[0], format % args)


class DialServer:
    """The HTTP server and its batching engine around a loaded `ChatGenerator`."""

    def __init__(self, generator: "ChatGenerator", host: str = "127.0.0.1", port: int = 0, *,
                 model_name: str = "model", api_key: str | None = None, batch_size: int = 16,
                 batch_wait_ms: float = 10, max_positions: int | None = None, strict_model_name: bool = False) -> None:
        self.stats = Stats()
        self.engine = BatchingEngine(generator, batch_size, batch_wait_ms, self.stats, max_positions)
        try:
            self.httpd = DialHTTPServer((host, port), self.engine, self.stats, model_name, api_key or None, strict_model_name)
        except OSError as exc:
            self.engine.close(timeout=1)
            raise DialError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.model_name = model_name

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, finish the requests in flight (up to `grace_s`), release everything.
        Call from another thread than `serve_forever`."""
        self.httpd.stopping = True
        self.httpd.shutdown()
        deadline = time.monotonic() + grace_s
        while self.stats.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.stats.open_connections > 0:
            log.warning("stopping with %d request(s) still open after %.0fs", self.stats.open_connections, grace_s)
        self.engine.close(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        self.httpd.server_close()


def load_generator(model_dir: Path, adapter_dir: Path | None, precision: str, batch_size: int):
    """The `ChatGenerator` (and the model's context length) for `dial serve`."""
    from dial.simulation.generation import ChatGenerator

    if not Path(model_dir).is_dir():
        raise DialError(f"--model-dir {model_dir}: not a directory")
    if adapter_dir is not None and not Path(adapter_dir).is_dir():
        raise DialError(f"--adapter-dir {adapter_dir}: not a directory")
    if precision not in PRECISIONS:
        raise DialError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    generator = ChatGenerator.load(Path(model_dir), Path(adapter_dir) if adapter_dir else None, precision, batch_size)
    max_positions = getattr(generator.model.config, "max_position_embeddings", None)
    return generator, max_positions


def serve(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = 16,
    batch_wait_ms: int = 10,
    precision: str = "auto",
    model_name: str | None = None,
    api_key_env: str | None = None,
    threads: int | None = None,
    strict_model_name: bool = False,
) -> None:
    """Load the model and serve it until SIGTERM / SIGINT (see the module doc). Prints one line,
    `serving <model_name> on http://<host>:<port>/v1`, to stdout once it accepts requests."""
    if threads is not None:
        if threads < 1:
            raise DialError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise DialError(f"--api-key-env {api_key_env}: the environment variable is not set or empty")
    model_name = model_name or Path(adapter_dir or model_dir).name
    generator, max_positions = load_generator(model_dir, adapter_dir, precision, batch_size)
    server = DialServer(generator, host, port, model_name=model_name, api_key=api_key,
                        batch_size=batch_size, batch_wait_ms=batch_wait_ms, max_positions=max_positions,
                        strict_model_name=strict_model_name)

    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame) -> None:
            if stop.is_set():  # a second signal: give up on the graceful stop
                os._exit(128 + signum)
            log.info("%s received: stopping", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)

    thread = threading.Thread(target=server.serve_forever, name="dial-serve-http", daemon=True)
    thread.start()
    log.info("model %s%s, batch_size %d, batch_wait_ms %s, api key %s", model_dir,
             f" + adapter {adapter_dir}" if adapter_dir else "", batch_size, batch_wait_ms,
             "required" if api_key else "not required")
    print(f"serving {model_name} on {server.url}", flush=True)
    try:
        while not stop.wait(0.5) and thread.is_alive():
            pass
    finally:
        server.stop()
        thread.join(5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("stopped (%s)", json.dumps(server.stats.snapshot()))


def serve_command(
    model_dir: Path = typer.Option(..., "--model-dir", help="A local checkpoint folder (config, weights, tokenizer)."),
    adapter_dir: Optional[Path] = typer.Option(None, "--adapter-dir", help="A LoRA adapter folder merged into the model."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, help="0: pick a free port (printed on stdout)."),
    batch_size: int = typer.Option(16, help="Requests generated together at most."),
    batch_wait_ms: int = typer.Option(10, help="How long the first request of a batch waits for others."),
    precision: str = typer.Option("auto", help="auto | bf16 | fp32."),
    model_name: Optional[str] = typer.Option(None, help="Name in responses and /v1/models (default: the folder name)."),
    api_key_env: Optional[str] = typer.Option(
        None, help="Env var holding the API key clients must send as 'Authorization: Bearer <key>'."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    strict_model_name: bool = typer.Option(
        False, help="Answer a request naming another model with 404 (as vLLM does for an adapter it has not loaded)."),
) -> None:
    """Serve a local chat model as an OpenAI-compatible endpoint (POST /v1/chat/completions)."""
    serve(model_dir, adapter_dir, host, port, batch_size, batch_wait_ms, precision, model_name, api_key_env, threads,
          strict_model_name)


if __name__ == "__main__":
    from dial.stage import run_stage

    run_stage(serve_command)
