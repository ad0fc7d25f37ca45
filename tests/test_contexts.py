"""Budget and priority invariants of context truncation (hypothesis), and context building."""

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dial.contexts import ContextParts, build_contexts, fit_context, render_context
from dial.errors import BudgetError
from dial.params import ContextParams
from dial.summarise import LocalSummariser, states_structure, verbatim_leak


def count_words(texts):
    return [len(text.split()) for text in texts]


sentence = st.lists(st.sampled_from("alpha beta gamma delta worry sleep work family exam dog".split()), min_size=1, max_size=30).map(" ".join)
parts_strategy = st.builds(
    ContextParts,
    instruction=sentence,
    profile=sentence,
    long_term=st.one_of(st.just(""), sentence),
    previous_summaries=st.lists(sentence, max_size=6).map(tuple),
    current_summary=sentence,
    recent_history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), sentence), max_size=25).map(tuple),
)


def check_invariants(original: ContextParts, fitted, count, max_tokens: int) -> None:
    kept = fitted.parts
    # Budget: the rendered text fits and its count is exact.
    assert fitted.n_tokens <= max_tokens
    assert count([fitted.text]) == [fitted.n_tokens]
    assert fitted.text == render_context(kept)
    # Never dropped.
    assert (kept.instruction, kept.profile, kept.current_summary) == (
        original.instruction, original.profile, original.current_summary)
    # Distant first: what is kept is the most recent suffix of each component.
    n_hist, n_sum = len(kept.recent_history), len(kept.previous_summaries)
    assert kept.recent_history == original.recent_history[len(original.recent_history) - n_hist:]
    assert kept.previous_summaries == original.previous_summaries[len(original.previous_summaries) - n_sum:]
    assert fitted.n_history_messages_dropped == len(original.recent_history) - n_hist
    assert fitted.n_previous_summaries_dropped == len(original.previous_summaries) - n_sum
    # Priority: summaries go only once all raw history is gone; long-term only after summaries.
    if fitted.n_previous_summaries_dropped:
        assert n_hist == 0
    if fitted.long_term_dropped:
        assert n_hist == 0 and n_sum == 0 and kept.long_term == ""
    else:
        assert kept.long_term == original.long_term
    # Nothing is dropped when everything fits.
    if count([render_context(original)])[0] <= max_tokens:
        assert kept == original


@settings(max_examples=300, deadline=None)
@given(parts=parts_strategy, max_tokens=st.integers(min_value=1, max_value=600))
def test_fit_context_budget_and_priority_word_counter(parts, max_tokens):
    mandatory = render_context(ContextParts(parts.instruction, parts.profile, "", (), parts.current_summary, ()))
    if count_words([mandatory])[0] > max_tokens:
        with pytest.raises(BudgetError, match="context.max_tokens"):
            fit_context(parts, count_words, max_tokens)
        return
    check_invariants(parts, fit_context(parts, count_words, max_tokens), count_words, max_tokens)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=parts_strategy, max_tokens=st.integers(min_value=40, max_value=1500))
def test_fit_context_budget_and_priority_real_tokenizer(tiny_tokenizer, parts, max_tokens):
    def count(texts):
        return [len(ids) for ids in tiny_tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    try:
        fitted = fit_context(parts, count, max_tokens)
    except BudgetError:
        mandatory = render_context(ContextParts(parts.instruction, parts.profile, "", (), parts.current_summary, ()))
        assert count([mandatory])[0] > max_tokens
        return
    check_invariants(parts, fitted, count, max_tokens)


def _toy_corpus():
    sessions = pd.DataFrame({
        "session_id": ["a0", "a1", "a2", "b0"],
        "user_id": ["ua", "ua", "ua", "ub"],
        "source": ["chitchat"] * 3 + ["esconv"],
        "session_index": [0, 1, 2, 0],
        "started_at": ["2018-01-01T10:00:00Z", "2018-02-01T10:00:00Z", "2018-03-01T10:00:00Z", None],
        "chatbot_id": [None] * 4,
        "topic": ["What is your favourite food?", "Where would you travel?", None, "I lost my job last week."],
        "metadata": ["{}"] * 4,
    })
    rows = []
    texts = {
        "a0": ["i really love pizza with pineapple honestly", "the crust matters most to me", "bye"],
        "a1": ["i want to travel to the mountains and eat pizza", "hiking there sounds great to me", "ok"],
        "a2": ["my exam in chemistry is tomorrow and i am so stressed", "pizza would cheer me up tonight"],
        "b0": ["i feel anxious since losing my job", "i do not know how to pay the rent now"],
    }
    for session_id, user_texts in texts.items():
        turn = 0
        for text in user_texts:
            rows.append((session_id, turn, "user", text)); turn += 1
            rows.append((session_id, turn, "assistant", "tell me more about that")); turn += 1
    messages = pd.DataFrame(rows, columns=["session_id", "turn_index", "role", "text"])
    messages["timestamp"] = None
    messages["metadata"] = "{}"
    users = pd.DataFrame({
        "user_id": ["ua", "ub"], "source": ["chitchat", "esconv"], "n_sessions": [3, 1],
        "profile": ["{}", json.dumps({"emotion_type": "anxiety", "problem_type": "job crisis"})],
    })
    return sessions, messages, users, texts


def test_build_contexts_uses_only_earlier_sessions_and_never_quotes_the_target():
    sessions, messages, users, texts = _toy_corpus()
    contexts = build_contexts(sessions, messages, users, ContextParams(), LocalSummariser(), count_words, progress=False)
    by_id = contexts.set_index("session_id")
    # First session: no history, no previous summaries, no long-term context.
    assert by_id.loc["a0", "previous_summaries"] == "[]" and by_id.loc["a0", "recent_history"] == "[]"
    assert "No earlier conversations" in by_id.loc["a0", "profile"]
    # Third session: two previous summaries, raw history of a1 only, recurring topic 'pizza'.
    assert len(json.loads(by_id.loc["a2", "previous_summaries"])) == 2
    history = json.loads(by_id.loc["a2", "recent_history"])
    assert [m["text"] for m in history if m["role"] == "user"] == texts["a1"]
    assert "pizza" in by_id.loc["a2", "long_term"]
    # ESConv-like profile and situation grounding.
    assert "anxiety" in by_id.loc["b0", "profile"] and "job crisis" in by_id.loc["b0", "profile"]
    assert "I lost my job last week." in by_id.loc["b0", "current_summary"]
    # The target session's own user messages never appear verbatim anywhere in its context.
    for session_id, user_texts in texts.items():
        context = by_id.loc[session_id, "context_text"]
        assert not verbatim_leak(by_id.loc[session_id, "current_summary"], user_texts)
        for text in user_texts:
            assert text not in context
    assert (contexts["n_tokens"] == count_words(list(contexts["context_text"]))).all()


def test_session_summaries_in_contexts_never_state_the_structure():
    """The current-session summary is shared by a real session and its simulations: it must not
    state counts, lengths or who spoke last, which a simulated session could contradict."""
    sessions, messages, users, _ = _toy_corpus()
    contexts = build_contexts(sessions, messages, users, ContextParams(), LocalSummariser(), count_words, progress=False)
    summaries = list(contexts["current_summary"]) + [s for row in contexts["previous_summaries"] for s in json.loads(row)]
    assert len(summaries) == 4 + 3  # a1 has one previous session, a2 two
    for summary in summaries:
        assert not states_structure(summary) and "tone" in summary


def test_build_contexts_truncates_to_budget_and_reports_it():
    sessions, messages, users, _ = _toy_corpus()
    full = build_contexts(sessions, messages, users, ContextParams(), LocalSummariser(), count_words, progress=False)
    budget = int(full.set_index("session_id").loc["a2", "n_tokens"]) - 5
    tight = build_contexts(sessions, messages, users, ContextParams(max_tokens=budget), LocalSummariser(), count_words, progress=False)
    row = tight.set_index("session_id").loc["a2"]
    assert row["n_tokens"] <= budget
    assert row["n_history_messages_dropped"] >= 1
    assert row["n_previous_summaries_dropped"] == 0  # history goes first


def test_budget_error_names_the_session():
    sessions, messages, users, _ = _toy_corpus()
    with pytest.raises(BudgetError, match="session a0"):
        build_contexts(sessions, messages, users, ContextParams(max_tokens=5), LocalSummariser(), count_words, progress=False)
