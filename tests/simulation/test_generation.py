"""Batched generation with per-row seeds and prefix reuse (tiny random model)."""

import pytest
import torch

from dial.simulation.generation import ChatGenerator, load_chat_model
from dial.params import DecodingParams


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, precision="fp32")
    return ChatGenerator(model, tokenizer, batch_size=4)


def conversation(i: int, extra: int = 0) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": f"context number {i} about work and sleep"}]
    for turn in range(extra):
        messages += [{"role": "assistant", "content": f"i feel tired {turn}"}, {"role": "user", "content": f"why is that {turn}"}]
    return messages


def test_greedy_matches_transformers_generate(generator):
    decoding = DecodingParams(temperature=0.0, max_new_tokens=12)
    conversations = [conversation(i, extra=i % 3) for i in range(3)]
    ours = generator.generate(conversations, decoding, [0, 1, 2])
    for conv, result in zip(conversations, ours):
        ids = generator.prompt_ids([conv])[0]
        out = generator.model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
            eos_token_id=generator.end_token_ids, pad_token_id=generator.pad_token_id,
        )
        new = out[0, len(ids):].tolist()
        ended = next((k for k, t in enumerate(new) if t in generator.end_token_ids), None)
        expected = generator.tokenizer.decode(new if ended is None else new[:ended], skip_special_tokens=True).strip()
        assert result.text == expected
        assert result.n_tokens == (len(new) if ended is None else ended + 1)


def test_each_row_depends_on_its_own_seed_not_on_the_batch(generator):
    decoding = DecodingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)
    conversations = [conversation(i, extra=i % 2) for i in range(6)]
    together = generator.generate(conversations, decoding, [10, 11, 12, 13, 14, 15])
    alone = [generator.generate([conv], decoding, [10 + i])[0] for i, conv in enumerate(conversations)]
    assert [g.text for g in together] == [g.text for g in alone]
    reseeded = generator.generate(conversations[:1], decoding, [99])[0]
    again = generator.generate(conversations[:1], decoding, [99])[0]
    assert reseeded == again


def test_prefix_cache_gives_the_same_tokens_and_skips_work(generator):
    decoding = DecodingParams(temperature=1.0, max_new_tokens=10)
    keys = ["a", "b"]
    first = generator.generate([conversation(0), conversation(1)], decoding, [1, 2], cache_keys=keys)
    grown = [conversation(i) + [{"role": "assistant", "content": g.text or "x"}, {"role": "user", "content": "and then?"}]
             for i, g in enumerate(first)]
    before = generator.tokens_reused
    cached = generator.generate(grown, decoding, [3, 4], cache_keys=keys)
    assert generator.tokens_reused > before  # the shared prefix was not run again
    fresh = ChatGenerator(generator.model, generator.tokenizer).generate(grown, decoding, [3, 4])
    assert [g.text for g in cached] == [g.text for g in fresh]
    generator.forget(keys)
    assert not generator._prefixes


def test_the_generated_message_is_kept_in_the_prefix_with_the_keys_values_a_fresh_run_computes(generator):
    # The next turn's prompt holds the message the model just wrote: its keys/values come from
    # decoding (batched, left-padded), so the next call need not run them again. They must equal
    # what running prompt + message through the model computes. (The tiny model's random tokens
    # rarely survive decode + re-encode, so reuse by the next prompt is checked on the real model:
    # bench/README, "Where a simulate stage's time goes".)
    decoding = DecodingParams(temperature=1.0, max_new_tokens=8)
    keys = ["g0", "g1", "g2"]
    conversations = [conversation(i, extra=i) for i in range(3)]
    prompts = generator.prompt_ids(conversations)
    generator.generate(conversations, decoding, [1, 2, 3], cache_keys=keys)
    for key, prompt in zip(keys, prompts):
        kept = generator._prefixes[key]
        assert kept.token_ids[: len(prompt)] == prompt and len(kept.token_ids) > len(prompt)
        assert kept.keys[0].shape[1] == len(kept.token_ids)
        with torch.no_grad():
            fresh = generator.model(input_ids=torch.tensor([kept.token_ids]), use_cache=True).past_key_values
        for layer, kept_keys, kept_values in zip(fresh.layers, kept.keys, kept.values):
            torch.testing.assert_close(kept_keys, layer.keys[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(kept_values, layer.values[0], atol=1e-4, rtol=1e-4)
    generator.forget()


def test_a_call_mixing_cached_and_fresh_conversations_gives_each_its_own_tokens(generator):
    # Rows with a cached prefix, rows without and rows of different lengths share one call;
    # each gets the tokens it gets alone, with no cache at all.
    decoding = DecodingParams(temperature=0.0, max_new_tokens=8)
    generator.generate([conversation(0), conversation(1, extra=2)], decoding, [1, 2], cache_keys=["m0", "m1"])
    grown = [
        conversation(0) + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "tell me more about it"}],
        conversation(1, extra=2) + [{"role": "assistant", "content": "fine"}, {"role": "user", "content": "go"}],
        conversation(7, extra=1),  # fresh: no cached prefix
    ]
    before = generator.tokens_reused
    mixed = generator.generate(grown, decoding, [3, 4, 5], cache_keys=["m0", "m1", "m7"])
    assert generator.tokens_reused > before
    alone = [ChatGenerator(generator.model, generator.tokenizer).generate([conv], decoding, [seed])[0]
             for conv, seed in zip(grown, [3, 4, 5])]
    assert [g.text for g in mixed] == [g.text for g in alone]
    generator.forget()


def test_identical_prompts_are_prefilled_once(generator):
    decoding = DecodingParams(temperature=1.0, max_new_tokens=4)
    prompt_tokens = len(generator.prompt_ids([conversation(5)])[0])
    before = generator.tokens_prefilled
    results = generator.generate([conversation(5)] * 4, decoding, list(range(4)), cache_keys=["alt"] * 4)
    assert generator.tokens_prefilled - before == prompt_tokens  # one batch: one prefill
    assert len({g.text for g in results}) > 1  # different samples from one prefill
    generator.forget(["alt"])
    # Different sessions grounded on the same context share the first prefill too.
    before = generator.tokens_prefilled
    generator.generate([conversation(6)] * 3, decoding, [1, 2, 3], cache_keys=["s1", "s2", "s3"])
    assert generator.tokens_prefilled - before == len(generator.prompt_ids([conversation(6)])[0])
    generator.forget()


@pytest.mark.parametrize(
    "end_at_token, hit_max_tokens, n_tokens",
    [(None, True, 6), (3, False, 3), (6, False, 6)],  # never ends: cut; ends early; ends on the last allowed token
)
def test_a_row_that_reaches_max_new_tokens_without_its_end_token_is_marked(generator, end_at_token, hit_max_tokens, n_tokens):
    end_id = generator.end_token_ids[0]
    calls = []

    def steer(module, args, kwargs, output):
        # Forward call k gives the logits of generated token k + 1 (call 0 is the prefill).
        wanted = len(calls) + 1 == end_at_token
        for token in generator.end_token_ids:
            output.logits[:, -1, token] = -1e4
        if wanted:
            output.logits[:, -1, end_id] = 1e4
        calls.append(1)
        return output

    handle = generator.model.register_forward_hook(steer, with_kwargs=True)
    try:
        result = generator.generate([conversation(1)], DecodingParams(temperature=1.0, max_new_tokens=6), [5])[0]
    finally:
        handle.remove()
    assert result.hit_max_tokens is hit_max_tokens and result.n_tokens == n_tokens


def test_too_long_prompt_is_a_clear_error(generator):
    long = [{"role": "system", "content": "word " * 20000}]
    with pytest.raises(ValueError, match="exceed the model's"):
        generator.generate([long], DecodingParams(max_new_tokens=4), [0])


def reference_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The textbook top-p filter over the fully sorted vocabulary, renormalised (none at top_p 1)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    filtered = probs.masked_fill(remove_sorted.scatter(1, order, remove_sorted), 0.0)
    return filtered / filtered.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_nucleus_equals_the_full_sort_filter(top_p, temperature):
    from dial.simulation.generation import nucleus

    generator = torch.Generator().manual_seed(7)
    # Peaked and flat rows: with temperature 3 the nucleus needs far more than the first 64 tokens.
    probs = torch.softmax(torch.randn((5, 3000), generator=generator) * 4 / temperature, dim=-1)
    candidate_probs, candidate_ids = nucleus(probs, top_p)
    ours = torch.zeros_like(probs).scatter(1, candidate_ids, candidate_probs)
    ours = ours / ours.sum(dim=-1, keepdim=True)
    assert torch.equal(ours > 0, reference_nucleus(probs, top_p) > 0)
    assert torch.allclose(ours, reference_nucleus(probs, top_p), atol=1e-6)


def test_sampling_follows_the_nucleus_distribution():
    from dial.simulation.generation import sample_next

    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    scores = probs.log().expand(20000, -1)
    generators = [torch.Generator().manual_seed(seed) for seed in range(len(scores))]
    drawn = sample_next(scores, generators, temperature=1.0, top_p=0.9)
    counts = torch.bincount(drawn, minlength=5).double()
    expected = torch.tensor([0.5, 0.25, 0.15, 0.0, 0.0]) / 0.9  # 0.5 + 0.25 + 0.15 reaches 0.9
    assert counts[3:].sum() == 0  # outside the nucleus: never
    sigma = (expected * (1 - expected) / len(scores)).sqrt()
    assert ((counts / len(scores) - expected).abs() <= 4 * sigma + 1e-12).all(), counts
    # top_p 1: the whole vocabulary, the rarest token included.
    everything = torch.bincount(sample_next(scores, [torch.Generator().manual_seed(s) for s in range(len(scores))], 1.0, 1.0), minlength=5)
    assert (everything > 0).all()
    assert abs(everything[4].item() / len(scores) - 0.04) < 4 * (0.04 * 0.96 / len(scores)) ** 0.5


@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_a_peaked_distribution_samples_its_only_token_even_when_the_rest_underflow_to_zero(top_p):
    # exp(-2e4) is 0 in float32: only token 7 has mass. With top_p 1 the candidates are in id
    # order, so "the last candidate with mass" is not the count of non-zero entries minus one.
    from dial.simulation.generation import sample_next

    scores = torch.full((50, 1000), -1e4)
    scores[:, 7] = 1e4
    drawn = sample_next(scores, [torch.Generator().manual_seed(seed) for seed in range(50)], 1.0, top_p)
    assert drawn.tolist() == [7] * 50


@pytest.mark.parametrize(
    "text, ends", [(".", True), (" fine.", True), ("?", True), ('!"', True), (".)", True), ("...", False), ("…", False), (" ok", False), (",", False)]
)
def test_sentence_end_tokens(text, ends):
    from dial.simulation.generation import _ends_sentence

    assert _ends_sentence(text) is ends


def generate_steered(generator, steer, max_sentences: int):
    """Generate 6 tokens for one prompt with `steer(logits, call)` editing each forward call's
    logits in place: the prefill (call 0) picks generated token 1, decode call k token k + 1."""
    calls = []

    def hook(module, args, kwargs, output):
        steer(output.logits, len(calls))
        calls.append(1)
        return output

    handle = generator.model.register_forward_hook(hook, with_kwargs=True)
    try:
        decoding = DecodingParams(temperature=1.0, max_new_tokens=6, max_sentences=max_sentences)
        return generator.generate([conversation(2)], decoding, [5])[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("max_sentences, n_tokens, hit_max_tokens", [(1, 2, False), (2, 5, False), (3, 6, True)])
def test_a_line_break_after_text_ends_a_sentence_but_not_after_a_full_stop(generator, max_sentences, n_tokens, hit_max_tokens):
    tokenizer = generator.tokenizer
    word, period = tokenizer.encode(" hello", add_special_tokens=False)[0], tokenizer.convert_tokens_to_ids(".")
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert len(newline) == 1 and newline[0] in generator.line_end_ids() and word not in generator.line_end_ids()
    forced = [word, period, newline[0], word, newline[0], word]  # "hello.\nhello\nhello"

    def steer(logits, call):
        logits[:, -1, forced[call]] = 1e4

    result = generate_steered(generator, steer, max_sentences)
    # Boundaries: the full stop (token 2) and the line break after the second "hello" (token 5);
    # the line break right after the full stop (token 3) is not a second one.
    assert (result.n_tokens, result.hit_max_tokens) == (n_tokens, hit_max_tokens)


@pytest.mark.parametrize("max_sentences, n_tokens, hit_max_tokens", [(1, 2, False), (2, 4, False), (0, 6, True)])
def test_max_sentences_ends_a_reply_at_a_sentence_not_at_the_cap(generator, max_sentences, n_tokens, hit_max_tokens):
    period = generator.tokenizer.convert_tokens_to_ids(".")
    assert period in generator.sentence_end_ids()

    def steer(logits, call):
        # A full stop at tokens 2 and 4, never an end token.
        for token in generator.end_token_ids:
            logits[:, -1, token] = -1e4
        logits[:, -1, list(generator.sentence_end_ids())] = -1e4
        if call + 1 in (2, 4):
            logits[:, -1, period] = 1e4

    result = generate_steered(generator, steer, max_sentences)
    assert (result.n_tokens, result.hit_max_tokens) == (n_tokens, hit_max_tokens)
    if max_sentences:
        assert result.text.endswith(".")  # the full stop is text, kept (unlike an end-of-turn token)


def test_the_default_device_is_cuda_when_present_and_models_load_onto_it(tiny_model_dir, monkeypatch):
    from dial.simulation.generation import default_device, load_chat_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    # The meta device stands in for CUDA here: every parameter and buffer goes where it is asked.
    model, _ = load_chat_model(tiny_model_dir, precision="fp32", device=torch.device("meta"))
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
