"""Held-out perplexity of real user messages (dial.evaluation.perplexity) on the tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dial.evaluation import perplexity
from dial.prompting import simulator_messages


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from dial.simulation.generation import load_chat_model

    return load_chat_model(tiny_model_dir, precision="fp32")


def real_sessions():
    """Three sessions of different lengths: a burst of user messages, a chatbot opening, a long one."""
    rows = {
        "s1": [("user", "hey how are you"), ("user", "I feel tired today"), ("assistant", "sorry to hear that"),
               ("user", "thanks, talk later")],
        "s2": [("assistant", "hello, what is on your mind?"), ("user", "my exam is tomorrow and I worry"),
               ("assistant", "good luck"), ("user", "bye")],
        "s3": [("user", f"message number {i} about my dog and the weather") if i % 2 == 0 else ("assistant", f"answer {i}")
               for i in range(10)],
    }
    messages = pd.DataFrame(
        [{"session_id": sid, "turn_index": t, "role": role, "text": text}
         for sid, turns in rows.items() for t, (role, text) in enumerate(turns)]
    )
    sessions = pd.DataFrame({"session_id": sorted(rows)})
    contexts = pd.DataFrame({"session_id": sorted(rows),
                             "context_text": ["You are a student.", "You are a nurse who works nights.", "You love dogs."]})
    return sessions, messages, contexts


def score(model_and_tokenizer, sessions, messages, contexts, **overrides):
    model, tokenizer = model_and_tokenizer
    settings = dict(max_sessions=0, max_user_turns=0, max_tokens=4096, batch_size=8, seed=0, n_resamples=200,
                    bootstrap_seed=0, progress=False)
    return perplexity.held_out_perplexity(model, tokenizer, sessions, messages, contexts, **{**settings, **overrides})


SEP = "<|msg|>"


def user_turns(history):
    """(first message position, the turn's messages joined by SEP) of every run of user messages."""
    turns, start = [], None
    for i, (role, _) in enumerate(history + [("end", "")]):
        if role == "user" and start is None:
            start = i
        elif role != "user" and start is not None:
            turns.append((start, SEP.join(text for _, text in history[start:i])))
            start = None
    return turns


def reference_nll(model, tokenizer, context, history, target, turn_text) -> tuple[float, int]:
    """Summed NLL and token count of the user turn starting at history[target] given everything
    before it, one sample at a time through the model's own loss (labels -100 on the prompt, as
    trl's completion mask)."""
    prompt = simulator_messages(context, history[:target])
    full = prompt + [{"role": "assistant", "content": turn_text}]
    prompt_text = tokenizer.apply_chat_template([prompt], tokenize=False, add_generation_prompt=True)[0]
    full_text = tokenizer.apply_chat_template([full], tokenize=False)[0]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    input_ids = torch.tensor([full_ids])
    labels = input_ids.clone()
    labels[0, : len(prompt_ids)] = -100
    with torch.inference_mode():
        loss = model(input_ids=input_ids, labels=labels).loss.item()
    n_tokens = len(full_ids) - len(prompt_ids)
    return loss * n_tokens, n_tokens


def test_perplexity_equals_exp_of_the_unbatched_reference_nll(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sessions, messages, contexts = real_sessions()
    total_nll, total_tokens = 0.0, 0
    for sid, context in zip(contexts["session_id"], contexts["context_text"]):
        turns = messages[messages["session_id"] == sid].sort_values("turn_index")
        history = list(zip(turns["role"], turns["text"]))
        for target, turn_text in user_turns(history):
            nll, n = reference_nll(model, tokenizer, context, history, target, turn_text)
            total_nll, total_tokens = total_nll + nll, total_tokens + n
    result = score(model_and_tokenizer, sessions, messages, contexts)
    assert result["n_tokens"] == total_tokens
    # s1 opens with a burst of two messages: one turn. 2 + 2 + 5 turns.
    assert result["n_turns"] == 9 and result["n_sessions"] == 3
    assert result["value"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert result["mean_nll"] == pytest.approx(total_nll / total_tokens, rel=1e-4)
    assert result["precision"] == "fp32"


def test_batching_and_padding_do_not_change_the_perplexity(model_and_tokenizer):
    sessions, messages, contexts = real_sessions()
    one_at_a_time = score(model_and_tokenizer, sessions, messages, contexts, batch_size=1)
    padded_together = score(model_and_tokenizer, sessions, messages, contexts, batch_size=3)
    assert padded_together["value"] == pytest.approx(one_at_a_time["value"], rel=1e-5)
    assert padded_together["n_tokens"] == one_at_a_time["n_tokens"]


def test_messages_past_max_user_turns_are_not_scored(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    sessions, messages, contexts = real_sessions()
    samples, _ = perplexity.user_message_samples(tokenizer, sessions, messages, contexts, max_user_turns=2, max_tokens=4096)
    first_two = [("s1", 0), ("s1", 3), ("s2", 1), ("s2", 3), ("s3", 0), ("s3", 2)]  # s1's burst is one turn
    assert [(sample.session_id, sample.turn_index) for sample in samples] == first_two
    # A later user message (s3's fifth) moves the perplexity only when it is scored.
    later_changed = messages.copy()
    later_changed.loc[(later_changed["session_id"] == "s3") & (later_changed["turn_index"] == 8), "text"] = "something else"
    capped = score(model_and_tokenizer, sessions, messages, contexts, max_user_turns=2)
    assert capped["n_turns"] == 6 and capped["max_user_turns"] == 2
    assert score(model_and_tokenizer, sessions, later_changed, contexts, max_user_turns=2)["value"] == capped["value"]
    uncapped = score(model_and_tokenizer, sessions, messages, contexts)["value"]
    assert score(model_and_tokenizer, sessions, later_changed, contexts)["value"] != uncapped


def test_long_samples_lose_their_oldest_history_first_then_are_skipped_and_counted(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    sessions, messages, contexts = real_sessions()
    whole, _ = perplexity.user_message_samples(tokenizer, sessions, messages, contexts, max_user_turns=0, max_tokens=4096)
    last = whole[-1]  # s3's last message, with the longest history
    fits_without_history = min(len(s.token_ids) for s in whole if s.session_id == "s3")
    cut, skipped = perplexity.user_message_samples(tokenizer, sessions, messages, contexts, 0, len(last.token_ids) - 1)
    assert skipped == 0 and cut[-1].history_cut > 0 and len(cut[-1].token_ids) < len(last.token_ids)
    assert cut[0] == whole[0]  # a sample that fits is left whole
    _, skipped = perplexity.user_message_samples(tokenizer, sessions, messages, contexts, 0, fits_without_history - 1)
    assert skipped >= 1


def test_perplexity_is_exp_of_total_nll_over_total_tokens():
    per_message = pd.DataFrame({
        "session_id": ["a", "a", "b", "c"],
        "turn_index": [0, 2, 1, 0],
        "n_tokens": [4, 6, 5, 10],
        "nll": [8.0, 9.0, 15.0, 12.0],
        "history_cut": [0, 0, 0, 1],
    })
    result = perplexity.summarise(per_message, n_resamples=200, seed=0)
    assert result["value"] == pytest.approx(math.exp(44.0 / 25)) and result["mean_nll"] == pytest.approx(44.0 / 25)
    assert (result["n_sessions"], result["n_turns"], result["n_tokens"], result["n_messages_history_cut"]) == (3, 4, 25, 1)


def test_interval_contains_the_value_and_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    n_tokens = rng.integers(5, 40, 30)
    per_message = pd.DataFrame({
        "session_id": [f"s{i % 12}" for i in range(30)],
        "turn_index": np.arange(30) // 12,
        "n_tokens": n_tokens,
        "nll": n_tokens * rng.uniform(1.0, 4.0, 30),
        "history_cut": 0,
    })
    result = perplexity.summarise(per_message, n_resamples=500, seed=3)
    assert result["value_ci_low"] < result["value"] < result["value_ci_high"]
    assert perplexity.summarise(per_message, n_resamples=500, seed=3) == result
    other_seed = perplexity.summarise(per_message, n_resamples=500, seed=4)
    assert (other_seed["value_ci_low"], other_seed["value_ci_high"]) != (result["value_ci_low"], result["value_ci_high"])


def test_a_sessions_messages_share_one_sequence(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    samples, _ = perplexity.user_message_samples(tokenizer, *real_sessions(), max_user_turns=0, max_tokens=4096)
    sequences = perplexity._sequences(samples)
    # One sequence per session: the burst is one completion and one assistant message in the next
    # prompt (the simulator's history format), so s1's second turn extends its first.
    assert len(sequences) == 3 and sum(len(sequence.spans) for sequence in sequences) == len(samples)


def test_no_scored_message_gives_no_value():
    empty = pd.DataFrame(columns=perplexity.MESSAGE_COLUMNS).astype({"n_tokens": "int64", "nll": "float64", "history_cut": "int64"})
    result = perplexity.summarise(empty, n_resamples=200, seed=0)
    assert result["value"] is None and result["value_ci_low"] is None and result["n_turns"] == 0
    assert np.isfinite(result["n_tokens"])
