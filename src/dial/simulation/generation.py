"""Batched chat generation with one random seed per conversation.

Used by the simulator (user messages), the `hf` chatbot backend and `dial serve`. Conversations of
a call are generated together (sorted by length, left-padded, `batch_size` at a time); each row
samples with its own `torch.Generator`, so a conversation's tokens depend on its own seed and
logits, not on which other conversations share the batch (up to float rounding of padding).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

from dial.params import DecodingParams

log = logging.getLogger(__name__)

# Tokens that end a generated chat message (ChatML end of turn, end of text).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")


@dataclass(frozen=True)
class Generated:
    text: str
    n_tokens: int  # generated tokens, end-of-turn token included when emitted
    # Stopped by max_new_tokens without an end-of-turn token: the text is cut, not finished (the
    # token that would have ended it exactly at the cap counts as ended).
    hit_max_tokens: bool


def bf16_supported(device: torch.device) -> bool:
    """bf16 compute that is fast here (one definition, shared with training)."""
    from dial.training.common import bf16_is_fast

    return bf16_is_fast(device)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Inference dtype for `precision` (auto | bf16 | fp32) on `device`."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def load_chat_model(model_dir: Path, adapter_dir: Path | None = None, precision: str = "auto", device=None):
    """A causal LM for inference: base weights, plus a LoRA adapter merged in when given."""
    from transformers import AutoModelForCausalLM

    from dial.models import load_tokenizer

    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        from dial.models import quiet_peft_deprecation

        with quiet_peft_deprecation():
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()  # merged: plain, fast forward
    model = model.to(device=device, dtype=resolve_dtype(precision, device)).eval()
    tokenizer = load_tokenizer(adapter_dir if adapter_dir is not None and (Path(adapter_dir) / "tokenizer.json").exists() else model_dir)
    return model, tokenizer


def sample_next(scores: torch.Tensor, generators: Sequence[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """Next token of each row, drawn with that row's own generator (greedy when temperature 0).

    Inverse-CDF sampling over the nucleus, with one uniform per row: the same distribution as
    `torch.multinomial` on the filtered vocabulary, which draws one exponential per vocabulary
    entry (49k for SmolLM2) and, with the full-vocabulary sort of the top-p filter, took a fifth
    of decoding time in a simulation."""
    scores = scores.float()
    if temperature == 0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores / temperature, dim=-1)
    candidate_probs, candidate_ids = nucleus(probs, top_p)
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators]).to(probs.device)
    cumulative = candidate_probs.cumsum(dim=-1)
    # right=True lands on the first entry whose cumulative mass exceeds the threshold: never a
    # zero-probability one; the clamp only guards a threshold rounded up to the total.
    picks = torch.searchsorted(cumulative, uniforms[:, None] * cumulative[:, -1:], right=True)
    # The last candidate with any mass: candidates are sorted by probability in the nucleus path
    # but in id order with top_p >= 1, where a peaked distribution underflows many ids to zero.
    columns = torch.arange(candidate_probs.shape[-1], device=probs.device)
    last_kept = torch.where(candidate_probs > 0, columns, 0).amax(dim=-1, keepdim=True)
    picks = torch.minimum(picks, last_kept)
    return candidate_ids.gather(1, picks)[:, 0]


def nucleus(probs: torch.Tensor, top_p: float, first_k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids) of each row's candidates, zero outside the top-p nucleus: the
    smallest set of most likely tokens whose mass reaches `top_p` (always at least the top token).

    The nucleus is found among the top k tokens, k growing until every row's nucleus fits, instead
    of sorting the whole vocabulary; top_p >= 1 keeps the whole vocabulary in id order."""
    rows, vocab = probs.shape
    if top_p >= 1.0:
        return probs, torch.arange(vocab, device=probs.device).expand(rows, vocab)
    k = min(vocab, first_k)
    while True:
        values, ids = probs.topk(k, dim=-1)  # sorted, most likely first
        cumulative = values.cumsum(dim=-1)
        if k == vocab or bool((cumulative[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 4)
    outside = cumulative - values >= top_p  # the mass before this token already reached top_p
    return values.masked_fill(outside, 0.0), ids


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


def _ends_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text)) and not re.search(r"(\.\.|…)[\"')\]]*\s*$", text)


@dataclass
class _CachedPrefix:
    """Tokens already run through the model for one conversation, with their keys/values
    (per layer, [kv_heads, tokens, head_dim]), so the next call only processes new tokens."""

    token_ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class PreallocatedLayer(DynamicLayer):
    """A decoding KV-cache layer that writes new tokens into buffers allocated once for the whole
    generation, instead of `DynamicLayer`'s concatenation, which copies the entire cache of every
    layer at every step (with a batch of long prompts that copy, not the model, dominated decoding)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self._key_buffer, self._value_buffer, self._length = keys, values, length
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:  # more tokens than planned: grow (never expected)
            grow = end - self._key_buffer.shape[-2]
            pad = lambda buffer: torch.cat([buffer, buffer.new_zeros((*buffer.shape[:2], grow, buffer.shape[-1]))], dim=-2)
            self._key_buffer, self._value_buffer = pad(self._key_buffer), pad(self._value_buffer)
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._key_buffer = self._key_buffer[indices]
        self._value_buffer = self._value_buffer[indices]
        self._expose()


class ChatGenerator:
    """Generates the next assistant message of many chat conversations in batches.

    Prefix reuse makes multi-turn simulation affordable on a CPU: a conversation's context is
    long (hundreds to thousands of tokens) and grows by a few dozen tokens per turn. With a
    `cache_key` per conversation, the keys/values of the tokens already processed are kept and
    only the new suffix is run next time; conversations sharing the same prompt in one call
    (alternatives at a critical point) are prefilled once. Decoding is batched across rows.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, reuse_prefixes: bool = True) -> None:
        self.model = model
        self.reuse_prefixes = reuse_prefixes  # False: every call runs every prompt token (benchmarks)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        vocab = tokenizer.get_vocab()
        self.end_token_ids = sorted({vocab[token] for token in END_OF_TURN_TOKENS if token in vocab})
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.end_token_ids:
            self.end_token_ids.append(tokenizer.eos_token_id)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_token_ids[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._prefixes: dict[str, _CachedPrefix] = {}
        self._boundaries: tuple[set[int], set[int], set[int]] | None = None  # built on first use (decodes the vocabulary)
        self.tokens_prefilled = 0  # prompt tokens actually run through the model (for benchmarks)
        self.tokens_reused = 0  # prompt tokens served from a cached prefix

    @classmethod
    def load(cls, model_dir: Path, adapter_dir: Path | None = None, precision: str = "auto", batch_size: int = 32):
        model, tokenizer = load_chat_model(model_dir, adapter_dir, precision)
        return cls(model, tokenizer, batch_size)

    def forget(self, cache_keys: Sequence[str] | None = None) -> None:
        """Drop cached prefixes (all of them when no keys are given)."""
        if cache_keys is None:
            self._prefixes.clear()
        for key in cache_keys or ():
            self._prefixes.pop(key, None)

    def sentence_end_ids(self) -> set[int]:
        """Tokens that end a sentence: their text ends in . ! or ? (a closing quote or bracket may
        follow), not in an ellipsis ("..", "…"), which usually goes on."""
        return self._boundary_tokens()[0]

    def line_end_ids(self) -> set[int]:
        """Tokens with a line break that are not sentence ends: they end a line of text."""
        return self._boundary_tokens()[1]

    def _boundary_tokens(self) -> tuple[set[int], set[int], set[int]]:
        """(sentence ends, line ends, blank tokens), from the decoded vocabulary, built once."""
        if self._boundaries is None:
            ids = range(len(self.tokenizer))
            texts = self.tokenizer.batch_decode([[i] for i in ids])
            sentence = {i for i, text in zip(ids, texts) if _ends_sentence(text)}
            line = {i for i, text in zip(ids, texts) if "\n" in text and i not in sentence}
            blank = {i for i, text in zip(ids, texts) if not text.strip()}
            self._boundaries = (sentence, line, blank)
        return self._boundaries

    def prompt_ids(self, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
        texts = self.tokenizer.apply_chat_template(list(conversations), tokenize=False, add_generation_prompt=True)
        if hasattr(self.tokenizer, "backend_tokenizer"):
            return [encoding.ids for encoding in self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],
        decoding: DecodingParams | Sequence[DecodingParams],
        seeds: Sequence[int],
        cache_keys: Sequence[str] | None = None,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[Generated]:
        """The next assistant message of each conversation (chat messages with roles).

        `decoding`: one for all conversations, or one per conversation (several chatbots on one
        model answer in one call: a decoding step costs about the same for more rows).
        `cache_keys` (one per conversation, optional) name conversations that continue across
        calls; their processed tokens are kept until `forget`."""
        if isinstance(decoding, DecodingParams):
            decoding = [decoding] * len(conversations)
        if len(conversations) != len(seeds) or len(decoding) != len(seeds) or (cache_keys is not None and len(cache_keys) != len(seeds)):
            raise ValueError("one seed and one decoding (and cache key, if any) per conversation are needed")
        if not conversations:
            return []
        prompts = self.prompt_ids(conversations)
        if not self.reuse_prefixes:
            cache_keys = None
        if self.max_positions:
            for i, ids in enumerate(prompts):
                if len(ids) + decoding[i].max_new_tokens > self.max_positions:
                    raise ValueError(
                        f"conversation {i}: {len(ids)} prompt tokens + {decoding[i].max_new_tokens} new tokens exceed "
                        f"the model's {self.max_positions} positions"
                    )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        results: list[Generated | None] = [None] * len(prompts)
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or len(batches) < 2, leave=False):
            generated = self._generate_batch(
                [prompts[i] for i in batch],
                [decoding[i] for i in batch],
                [seeds[i] for i in batch],
                [cache_keys[i] for i in batch] if cache_keys is not None else [None] * len(batch),
            )
            for index, item in zip(batch, generated):
                results[index] = item
        return results  # type: ignore[return-value]

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _sample(logits, active, batch_rows, generators, decoding) -> list[int]:
        """Next token of each active batch position; rows sharing temperature and top_p are drawn
        together (the draw of a row depends only on its logits and its own generator)."""
        groups: dict[tuple[float, float], list[int]] = {}
        for index, position in enumerate(active):
            row_decoding = decoding[batch_rows[position]]
            groups.setdefault((row_decoding.temperature, row_decoding.top_p), []).append(index)
        tokens = [0] * len(active)
        for (temperature, top_p), indices in groups.items():
            positions = [active[index] for index in indices]
            rows_logits = logits if len(positions) == logits.shape[0] else logits[torch.tensor(positions, device=logits.device)]
            drawn = sample_next(rows_logits, [generators[batch_rows[p]] for p in positions], temperature, top_p)
            for index, token in zip(indices, drawn.tolist()):
                tokens[index] = token
        return tokens

    def _prefill(self, prompt: list[int], cached: _CachedPrefix | None) -> tuple[torch.Tensor, _CachedPrefix]:
        """Run the prompt's tokens not yet in `cached`; returns the last position's logits."""
        from transformers import DynamicCache

        reuse = 0
        if cached is not None:
            limit = min(len(cached.token_ids), len(prompt) - 1)  # at least one token must be run
            while reuse < limit and cached.token_ids[reuse] == prompt[reuse]:
                reuse += 1
        cache = DynamicCache()
        if reuse:
            cache = DynamicCache(
                ddp_cache_data=[
                    (k[None, :, :reuse].to(self.device), v[None, :, :reuse].to(self.device))
                    for k, v in zip(cached.keys, cached.values)
                ]
            )
        new_tokens = torch.tensor([prompt[reuse:]], dtype=torch.long, device=self.device)
        positions = torch.arange(reuse, len(prompt), device=self.device)[None, :]
        # logits_to_keep=1: only the last position's logits are needed (saves the vocab projection
        # of every prompt token: ~20% of a small model's compute and a [tokens x vocab] tensor).
        output = self.model(
            input_ids=new_tokens, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        self.tokens_prefilled += len(prompt) - reuse
        self.tokens_reused += reuse
        cache = output.past_key_values
        prefix = _CachedPrefix(
            list(prompt), [layer.keys[0] for layer in cache.layers], [layer.values[0] for layer in cache.layers]
        )
        return output.logits[0, -1], prefix

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], decoding: list[DecodingParams], seeds: list[int], cache_keys: list[str | None]
    ) -> list[Generated]:
        from transformers import DynamicCache

        # 1. Prefill each distinct prompt once, continuing a cached prefix when there is one.
        # Rows with the same prompt (sessions grounded on one context, alternatives at one
        # point) share the result: the tensors are only read afterwards.
        prefilled: dict[tuple, tuple[torch.Tensor, _CachedPrefix]] = {}
        row_prefix = []
        for prompt, key in zip(prompts, cache_keys):
            identity = tuple(prompt) if self.reuse_prefixes else len(prefilled)
            if identity not in prefilled:
                prefilled[identity] = self._prefill(prompt, self._prefixes.get(key) if key is not None else None)
            row_prefix.append(prefilled[identity])

        # 2. One left-padded batch cache; every row continues from its own prompt length.
        lengths = [len(prompt) for prompt in prompts]
        width = max(lengths)
        n_layers = len(row_prefix[0][1].keys)
        layer_kv = []
        max_new_tokens = [row_decoding.max_new_tokens for row_decoding in decoding]
        capacity = width + max(max_new_tokens)
        for layer in range(n_layers):
            keys = [prefix.keys[layer] for _, prefix in row_prefix]
            values = [prefix.values[layer] for _, prefix in row_prefix]
            heads, _, dim = keys[0].shape
            padded_k = keys[0].new_zeros((len(prompts), heads, capacity, dim))
            padded_v = values[0].new_zeros((len(prompts), heads, capacity, dim))
            for row, (k, v) in enumerate(zip(keys, values)):
                padded_k[row, :, width - k.shape[1] : width] = k
                padded_v[row, :, width - v.shape[1] : width] = v
            layer_kv.append((padded_k, padded_v))
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :1], v[:, :, :1]) for k, v in layer_kv])
        cache.layers = [PreallocatedLayer(k, v, width) for k, v in layer_kv]
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        for row, length in enumerate(lengths):
            attention_mask[row, width - length :] = 1
        logits = torch.stack([row_logits for row_logits, _ in row_prefix])

        # 3. Batched decoding. A row that emits an end-of-turn token stops generating; finished
        # rows stay in the batch (fed padding, their logits ignored) until at most half of it is
        # still generating, then the batch is compacted: compacting copies every layer's cache,
        # while a decode step's cost is mostly reading the weights, whatever the number of rows.
        generators = [torch.Generator().manual_seed(int(seed) % (2**63)) for seed in seeds]
        generated: list[list[int]] = [[] for _ in prompts]
        ended = [False] * len(prompts)
        # max_sentences counts sentences, and lines: a line break after some text ends one too
        # (a reply that lists, writes code or loops over short lines would otherwise never stop
        # before the cap; a line break right after a full stop is not counted twice).
        sentences_left = [row_decoding.max_sentences for row_decoding in decoding]  # 0 = no limit
        sentence_end_ids, line_end_ids, blank_ids = self._boundary_tokens() if any(sentences_left) else (set(), set(), set())
        text_since_boundary = [False] * len(prompts)
        kept_last = [False] * len(prompts)  # ended by a sentence: its last token is text, not an end token
        batch_rows = list(range(len(prompts)))  # batch position -> row
        active = list(range(len(prompts)))  # batch positions still generating
        end_ids = set(self.end_token_ids)
        # Generated tokens whose keys/values are in the cache (fed back as input), and the prefix
        # (prompt + those tokens) kept per keyed row when it leaves the batch: the next turn's
        # prompt contains this message, so it need not be run through the model again.
        fed = [0] * len(prompts)
        keep_kv = any(key is not None for key in cache_keys)
        kept_prefix: dict[int, _CachedPrefix] = {}

        def keep(positions) -> None:
            for position in positions:
                row = batch_rows[position]
                if cache_keys[row] is None or row in kept_prefix:
                    continue
                start, end = width - lengths[row], width + fed[row]
                kept_prefix[row] = _CachedPrefix(
                    list(prompts[row]) + generated[row][: fed[row]],
                    [layer._key_buffer[position, :, start:end].clone() for layer in cache.layers],
                    [layer._value_buffer[position, :, start:end].clone() for layer in cache.layers],
                )

        for step in range(max(max_new_tokens)):
            sampled = self._sample(logits, active, batch_rows, generators, decoding)
            next_tokens = [self.pad_token_id] * len(batch_rows)
            still = []
            for position, token in zip(active, sampled):
                row = batch_rows[position]
                generated[row].append(token)
                next_tokens[position] = token
                boundary = False
                if sentences_left[row]:
                    text_since_boundary[row] |= token not in blank_ids
                    boundary = token in sentence_end_ids or (token in line_end_ids and text_since_boundary[row])
                    if boundary:
                        text_since_boundary[row] = False
                if token in end_ids:
                    ended[row] = True
                elif boundary and sentences_left[row] == 1:
                    ended[row] = kept_last[row] = True
                elif len(generated[row]) < max_new_tokens[row]:  # else: cut at its budget
                    if boundary:
                        sentences_left[row] -= 1
                    still.append(position)
            if not still:
                break
            if len(still) <= len(batch_rows) // 2:
                if keep_kv:
                    keep([position for position in range(len(batch_rows)) if position not in set(still)])
                next_tokens = [next_tokens[position] for position in still]
                index = torch.tensor(still, device=self.device)
                cache.batch_select_indices(index)
                attention_mask = attention_mask[index]
                batch_rows = [batch_rows[position] for position in still]
                still = list(range(len(still)))
            active = still
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(batch_rows), 1))], dim=1)
            positions = torch.tensor([[lengths[row] + step] for row in batch_rows], device=self.device)
            output = self.model(
                input_ids=torch.tensor(next_tokens, device=self.device)[:, None],
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache = output.past_key_values
            logits = output.logits[:, -1]
            for position in active:
                fed[batch_rows[position]] += 1

        # 4. Keep each keyed conversation's prompt (and generated message) for its next call.
        if keep_kv:
            keep(range(len(batch_rows)))
        for row, (key, (_, prefix)) in enumerate(zip(cache_keys, row_prefix)):
            if key is not None:
                self._prefixes[key] = kept_prefix.get(row, prefix)

        results = []
        for row, ids in enumerate(generated):
            kept = ids[:-1] if ended[row] and not kept_last[row] else ids
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append(Generated(text=text, n_tokens=len(ids), hit_max_tokens=not ended[row]))
        return results
