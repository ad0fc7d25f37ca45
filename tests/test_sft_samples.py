"""Flipped-dialogue SFT samples: one per user turn (a burst joined by the separator), one end per
session, exact token budget."""

import json

import pandas as pd
import pytest

from dial.params import SftSamplesParams
from dial.prompting import simulator_messages
from dial.sft_samples import ChatRenderer, build_sft_samples, turn_targets

END, SEP = "<|endconversation|>", "<|msg|>"


def corpus(n_long_turns=0):
    sessions = pd.DataFrame({"session_id": ["s1", "s2"], "user_id": ["a", "b"]})
    turns = [("s1", "user", "hey"), ("s1", "user", "you there?"), ("s1", "assistant", "yes hi"),
             ("s1", "user", "cool, bye"), ("s2", "assistant", "welcome! how can I help"), ("s2", "user", "i feel low")]
    turns += [("s2", "assistant" if i % 2 == 0 else "user", f"long message number {i} " * 6) for i in range(n_long_turns)]
    messages = pd.DataFrame(turns, columns=["session_id", "role", "text"])
    messages["turn_index"] = messages.groupby("session_id").cumcount()
    contexts = pd.DataFrame({"session_id": ["s1", "s2"], "context_text": ["CONTEXT ONE", "CONTEXT TWO"]})
    splits = pd.DataFrame({"user_id": ["a", "b"], "split": ["train", "valid"]})
    return sessions, messages, contexts, splits


def test_one_sample_per_user_turn_and_one_end_per_session(tiny_tokenizer):
    sessions, messages, contexts, splits = corpus()
    samples, report = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(), tiny_tokenizer, progress=False)
    s1 = samples[samples["session_id"] == "s1"].sort_values("target_turn_index")
    # The burst "hey", "you there?" is one turn; the session ends with the user's "cool, bye", so
    # that turn carries the end marker as its last piece.
    assert list(s1["completion"]) == [f"hey{SEP}you there?", f"cool, bye{SEP}{END}"]
    assert list(s1["is_end"]) == [False, True]
    assert list(s1["n_target_messages"]) == [2, 1]
    assert list(s1["target_turn_index"]) == [0, 3]
    assert list(s1["sample_id"]) == ["s1:0000", "s1:end"]
    assert report["samples"] == 3 and report["end_samples"] == 2 and report["burst_samples"] == 1
    assert set(samples.loc[samples["session_id"] == "s2", "split"]) == {"valid"}
    # The flip: real user -> assistant, chatbot -> user, context as system; the burst in the
    # history is one assistant message, exactly as the first sample's target wrote it.
    prompt = json.loads(s1.iloc[1]["prompt"])
    assert prompt == [
        {"role": "system", "content": "CONTEXT ONE"},
        {"role": "assistant", "content": f"hey{SEP}you there?"},
        {"role": "user", "content": "yes hi"},
    ]
    assert prompt[1]["content"] == s1.iloc[0]["completion"]


def test_a_session_ending_with_the_chatbot_gets_the_end_marker_alone():
    history = [("user", "hi"), ("assistant", "hello"), ("user", "ok"), ("user", "thanks"), ("assistant", "bye!")]
    assert turn_targets(history, END, SEP) == [(0, "hi", False, 1), (2, f"ok{SEP}thanks", False, 2), (5, END, True, 0)]
    assert turn_targets([], END, SEP) == [(0, END, True, 0)]


def test_a_real_message_containing_the_separator_is_skipped_and_counted(tiny_tokenizer):
    sessions, messages, contexts, splits = corpus()
    messages.loc[messages["text"] == "you there?", "text"] = f"you{SEP}there?"
    samples, report = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(), tiny_tokenizer, progress=False)
    assert "s1:0000" not in set(samples["sample_id"]) and "s1:end" in set(samples["sample_id"])
    assert report["samples_with_separator_in_a_message_skipped"] == 1
    # A session whose only turn is skipped has no sample left, and no error.
    messages = messages[messages["session_id"] != "s1"]
    messages.loc[messages["text"] == "i feel low", "text"] = f"i feel{SEP}low"
    samples, report = build_sft_samples(sessions[sessions["session_id"] == "s2"], messages, contexts, splits,
                                        SftSamplesParams(), tiny_tokenizer, progress=False)
    assert samples.empty and report["samples_with_separator_in_a_message_skipped"] == 1


def test_token_counts_are_exact(tiny_tokenizer):
    sessions, messages, contexts, splits = corpus()
    samples, _ = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(), tiny_tokenizer, progress=False)
    for row in samples.itertuples():
        prompt = json.loads(row.prompt)
        prompt_ids = tiny_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        full_ids = tiny_tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": row.completion}], tokenize=True, return_dict=False)
        assert row.n_prompt_tokens == len(prompt_ids)
        assert row.n_prompt_tokens + row.n_completion_tokens == len(full_ids)


def test_oldest_history_dropped_to_fit_budget(tiny_tokenizer):
    sessions, messages, contexts, splits = corpus(n_long_turns=30)
    loose, _ = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(max_tokens=100_000), tiny_tokenizer, progress=False)
    budget = int((loose["n_prompt_tokens"] + loose["n_completion_tokens"]).max()) // 2
    tight, report = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(max_tokens=budget), tiny_tokenizer, progress=False)
    assert ((tight["n_prompt_tokens"] + tight["n_completion_tokens"]) <= budget).all()
    assert report["samples_with_history_dropped"] > 0
    last = tight[tight["sample_id"] == "s2:end"].iloc[0]
    prompt = json.loads(last["prompt"])
    assert prompt[0] == {"role": "system", "content": "CONTEXT TWO"}  # context always kept
    s2 = messages[messages["session_id"] == "s2"].sort_values("turn_index")
    target = last["target_turn_index"]  # s2 ends with a user turn: the end sample is that turn
    kept = [m["content"] for m in prompt[1:]]
    assert kept == list(s2["text"])[:target][-len(kept):]  # the most recent messages survive
    assert last["n_history_messages_dropped"] == target - len(kept)
    # Minimal: keeping one more old message would break the budget.
    renderer = ChatRenderer(tiny_tokenizer)
    history = list(zip(s2["role"], s2["text"]))
    one_more = simulator_messages("CONTEXT TWO", history[target - len(kept) - 1 : target])
    (counts,) = renderer.count_samples([one_more], [last["completion"]])
    assert sum(counts) > budget


def test_samples_that_cannot_fit_are_counted_not_silently_lost(tiny_tokenizer):
    sessions, messages, contexts, splits = corpus()
    samples, report = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(max_tokens=3), tiny_tokenizer, progress=False)
    assert samples.empty and report["samples_over_budget_skipped"] == 3


def test_prompt_render_matches_simulator_messages(tiny_tokenizer):
    renderer = ChatRenderer(tiny_tokenizer)
    messages = simulator_messages("CTX", [("user", "hello"), ("assistant", "hi there")])
    (text,) = renderer.prompt_texts([messages])
    assert text.index("CTX") < text.index("hello") < text.index("hi there")
    assert renderer.completion_texts([messages], ["next"])[0].startswith("next")


@pytest.mark.parametrize("max_tokens", [100_000, 400, 150])
def test_block_additive_counts_equal_the_exact_per_sample_path(tiny_tokenizer, monkeypatch, max_tokens):
    """The O(messages) path (token counts added per rendered message) gives exactly what rendering
    and tokenising every sample gives, including which history is dropped."""
    import dial.sft_samples as sft

    sessions, messages, contexts, splits = corpus(n_long_turns=30)
    params = SftSamplesParams(max_tokens=max_tokens)
    results = []
    real_additive = sft._additive_counts
    monkeypatch.setattr(sft, "_additive_counts", lambda *a: results.append(real_additive(*a)) or results[-1])
    fast, fast_report = build_sft_samples(sessions, messages, contexts, splits, params, tiny_tokenizer, progress=False)
    assert len(results) == 2 and all(result is not None for result in results)  # the fast path ran
    monkeypatch.setattr(sft, "_additive_counts", lambda *a: None)  # force the per-sample path
    exact, exact_report = build_sft_samples(sessions, messages, contexts, splits, params, tiny_tokenizer, progress=False)
    pd.testing.assert_frame_equal(fast, exact)
    assert fast_report == exact_report
    if max_tokens < 1000:
        assert fast_report["samples_with_history_dropped"] > 0


def test_a_real_message_containing_a_malformed_marker_is_skipped_too(tiny_tokenizer):
    """Markers count malformed when a generated turn is read (`parse_user_turn`), so a real message
    holding one would read back as other messages: skipped and counted like the exact separator."""
    sessions, messages, contexts, splits = corpus()
    messages.loc[messages["text"] == "you there?", "text"] = "you |msg|> there?"
    samples, report = build_sft_samples(sessions, messages, contexts, splits, SftSamplesParams(), tiny_tokenizer, progress=False)
    assert "s1:0000" not in set(samples["sample_id"]) and report["samples_with_separator_in_a_message_skipped"] == 1
