"""Where a simulator's messages are generated (`simulator.backend`).

* `local`: `ChatGenerator` on the base model with the simulator's LoRA adapter merged, in the
  stage's own process (the CPU default).
* `openai`: an OpenAI-compatible server (vLLM, `dial serve`, ...). Each simulator is a served model:
  with vLLM, the base model plus one LoRA adapter per simulator, served by name
  (`--lora-modules sft=models/simulator/sft it1=models/simulator/it1 ...`, or loaded at run time
  through `/v1/load_lora_adapter`); zero-shot asks for the base model's served name.

Both take the same chat messages (`dial.prompting.simulator_messages`: the context as system
message, the flipped session) and render them with the simulator's chat template: locally with its
tokenizer, on the server with the same checkpoint's template (`dial serve` and vLLM both apply the
tokenizer's `chat_template`). The tokenizer is loaded locally in both cases, so the stages count
tokens the same way.

One request per row, each with that row's seed (reduced to 31 bits, as the `openai` chatbot
does): the alternatives of a critical point are separate requests with their own seeds rather than
one request with `n`, so every alternative is reproducible on its own; a server with prefix
caching (vLLM's automatic prefix caching) prefills their shared prompt once anyway. At most
`max_concurrency` requests are in flight; the server batches them. Retries, timeouts and errors
are `dial.openai_client`'s; a failure names the simulator, the served model and the URL. A 404
means the server does not serve that model: the adapter is not loaded.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from dial.errors import DialError
from dial.openai_client import Completion, EndpointError, chat_completion
from dial.params import DecodingParams, SimulatorParams, SimulatorServerParams

SEED_MODULUS = 2**31


class SimulatorServerError(DialError):
    """The simulator's server failed a request after its retries."""


class OpenAIGenerator:
    """`ChatGenerator`'s interface (`generate`, `forget`, `tokenizer`) over an OpenAI-compatible
    server: one chat-completions request per conversation."""

    def __init__(self, server: SimulatorServerParams, simulator: str, tokenizer) -> None:
        self.server = server
        self.simulator = simulator
        self.model = server.served_model(simulator)
        self.tokenizer = tokenizer
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=server.max_concurrency, thread_name_prefix=f"simulator-{simulator}"
        )

    def __repr__(self) -> str:
        return f"OpenAIGenerator(simulator={self.simulator!r}, base_url={self.server.base_url!r}, model={self.model!r})"

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],
        decoding: DecodingParams | Sequence[DecodingParams],
        seeds: Sequence[int],
        cache_keys: Sequence[str] | None = None,
        progress: bool = False,
        desc: str = "generate",
    ):
        """The next assistant message of each conversation; same contract as `ChatGenerator.generate`
        (`cache_keys` are accepted and unused: the server keeps its own prefix cache)."""
        from dial.simulation.generation import Generated

        if self._pool is None:
            raise DialError(f"{self!r} is closed")
        if isinstance(decoding, DecodingParams):
            decoding = [decoding] * len(conversations)
        if len(conversations) != len(seeds) or len(decoding) != len(seeds):
            raise ValueError("one seed and one decoding per conversation are needed")
        failed = threading.Event()  # after a failure the requests not started yet are not sent
        futures = [
            self._pool.submit(self._call, conversation, row_decoding, seed, failed)
            for conversation, row_decoding, seed in zip(conversations, decoding, seeds)
        ]
        with tqdm(total=len(futures), desc=desc, unit="msg", disable=not progress, leave=False) as bar:
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            wait(futures)  # no request outlives the call
        for index, future in enumerate(futures):
            if future.exception() is not None:
                raise self._error(index, future.exception())
        results = []
        for future in futures:
            completion: Completion = future.result()
            usage = completion.usage or {}
            n_tokens = usage.get("completion_tokens")
            if n_tokens is None:  # a server without usage: count with the simulator's tokenizer
                n_tokens = len(self.tokenizer(completion.text, add_special_tokens=False)["input_ids"])
            results.append(Generated(text=completion.text, n_tokens=int(n_tokens), hit_max_tokens=completion.finish_reason == "length"))
        return results

    def _call(self, conversation, decoding: DecodingParams, seed: int, failed: threading.Event) -> Completion | None:
        if failed.is_set():
            return None
        try:
            return chat_completion(
                self.server.base_url,
                self.model,
                conversation,
                api_key_env=self.server.api_key_env or None,
                timeout_s=self.server.timeout_s,
                max_retries=self.server.max_retries,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                max_tokens=decoding.max_new_tokens,
                seed=int(seed) % SEED_MODULUS,
                what=f"simulator {self.simulator!r} (served model {self.model!r})",
            )
        except BaseException:
            failed.set()
            raise

    def _error(self, index: int, exc: BaseException) -> SimulatorServerError:
        if isinstance(exc, EndpointError):
            hint = ""
            if exc.status == 404:
                hint = (f" (HTTP 404: the server does not serve a model named {self.model!r}; with vLLM, load the "
                        f"simulator's adapter: --lora-modules {self.model}=<adapter dir>, or POST /v1/load_lora_adapter)")
            elif exc.status is None:
                hint = " (is the server running? see README, 'Simulators on a server')"
            error = SimulatorServerError(f"{exc}{hint}")
        else:
            error = SimulatorServerError(f"simulator {self.simulator!r}: request {index} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def forget(self, cache_keys: Sequence[str] | None = None) -> None:
        """Nothing to drop: the server manages its own cache."""

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def load_simulator(
    simulator: str,
    settings: SimulatorParams,
    base_model_dir: Path,
    adapter_dir: Path | None,
    precision: str,
    batch_size: int,
):
    """The generator of `simulator` (zero-shot, sft, it1, ...) on the configured backend."""
    if settings.backend == "openai":
        from dial.models import load_tokenizer

        tokenizer_dir = adapter_dir if adapter_dir is not None and (Path(adapter_dir) / "tokenizer.json").exists() else base_model_dir
        return OpenAIGenerator(settings.server, simulator, load_tokenizer(tokenizer_dir))
    from dial.simulation.generation import ChatGenerator

    return ChatGenerator.load(base_model_dir, adapter_dir, precision=precision, batch_size=batch_size)
