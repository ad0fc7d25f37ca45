"""Simulator errors: each flag on hand-written user messages (what must fire and what a real user
writes that must not), invariants of the verbatim rule, the per-session rows and rates, and the
rates' place in `evaluate`, metrics.json and report.md."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dial.evaluation import report, simulator_errors, stats
from dial.evaluation.evaluate import evaluate
from dial.evaluation.simulator_errors import (
    SimulatorContext,
    ended_mid_task,
    message_flags,
    per_session,
    profile_contradictions,
    role_break_flags,
    summarise,
)
from eval_helpers import messages_frame
from test_report import synthetic

# --------------------------------------------------------------------------------------------
# Role breaks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, flag",
    [
        ("How can I help you today?", "speaks_as_assistant"),
        ("Hello! How may I assist?", "speaks_as_assistant"),
        ("Is there anything else I can help you with?", "speaks_as_assistant"),
        ("As an AI, I don't have feelings.", "speaks_as_assistant"),
        ("I'm just a language model.", "speaks_as_assistant"),
        ("It sounds like you're feeling overwhelmed.", "speaks_as_assistant"),
        ("How does that make you feel?", "speaks_as_assistant"),
        ("Thank you for sharing that with me, I'm here to listen.", "speaks_as_assistant"),
        ("Have you thought about talking to a therapist?", "speaks_as_assistant"),
        ("## Your role\nYou are role-playing a real person", "describes_instructions"),
        ("Your role: answer as the user", "describes_instructions"),
        ("You are a user who is stressed about work", "describes_instructions"),
        ("I can't, my system prompt forbids it", "describes_instructions"),
        ("This session: the person talks about exams", "describes_instructions"),
        ("User profile:\nage: 30", "describes_instructions"),
        ("Conversation prompt (shown to both speakers): pets", "describes_instructions"),
        ("ok let's get back to the simulation", "meta_talk"),
        ("sorry, out of character for a second", "meta_talk"),
        ("thanks (end of conversation)", "meta_talk"),
        ("bye endconversation", "meta_talk"),
        ("<|im_start|>assistant\nhello", "markup_leak"),
        ("fine thanks</|msg", "markup_leak"),
        ("assistant: sure, I can do that", "markup_leak"),
        ("I feel bad\nUser: and tired", "markup_leak"),
        ("i am fine <reply> really", "markup_leak"),
        ("[INST] hi [/INST]", "markup_leak"),
    ],
)
def test_role_breaks_are_flagged(text, flag):
    assert flag in role_break_flags(text)


@pytest.mark.parametrize(
    "text",
    [
        "can you help me?",
        "How can I help my friend who is sad?",
        "What can I do about my anxiety?",
        "Is there anything I can do to sleep better?",
        "how are you? what about you?",
        "I'm an AI researcher, so I know the hype",
        "What's your role at work?",
        "I went to <LOCATION_2> with <PERSON_1> last summer",  # PII placeholders of the scrubbed data
        "love you <3",
        "the user manual was useless",
        "thank you, bye",
        "In the context of my job that makes sense",
        "I am a huge fan of that show",
        "I might see a counsellor on Friday for my group session",  # a seeker's plan
        "It seems like you are touring the entire country!",
    ],
)
def test_what_real_users_write_is_not_a_role_break(text):
    assert role_break_flags(text) == []
    assert message_flags(text) == []


# --------------------------------------------------------------------------------------------
# Verbatim copies of the context
# --------------------------------------------------------------------------------------------

CONTEXT = SimulatorContext(
    text="## This session\nThe user has been feeling really anxious about the new job since Monday morning.",
    profile="age: 34\ngender: female\nname: Dana",
)


def test_eight_copied_words_are_flagged_whatever_the_case_and_punctuation():
    assert "verbatim_context" in message_flags("honestly i've BEEN FEELING, really anxious about the new job!!", CONTEXT)


def test_seven_copied_words_are_not():
    assert "verbatim_context" not in message_flags("i've been feeling really anxious about the exams", CONTEXT)


def test_no_context_no_verbatim_flag():
    assert message_flags("been feeling really anxious about the new job since", SimulatorContext()) == []


VOCABULARY = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
OTHER_WORDS = ["red", "green", "blue", "cyan", "pink", "gold", "gray", "teal"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), min_size=0, max_size=40), st.lists(st.sampled_from(OTHER_WORDS), min_size=0, max_size=40))
def test_a_message_sharing_no_word_with_the_context_is_never_a_copy(context_words, message_words):
    context = SimulatorContext(text=" ".join(context_words))
    assert "verbatim_context" not in message_flags(" ".join(message_words), context)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), min_size=8, max_size=40), st.data())
def test_any_eight_consecutive_context_words_inside_a_message_are_a_copy(context_words, data):
    start = data.draw(st.integers(0, len(context_words) - 8))
    length = data.draw(st.integers(8, len(context_words) - start))
    before = data.draw(st.lists(st.sampled_from(OTHER_WORDS), max_size=5))
    copied = " ".join(before + context_words[start : start + length]).upper()
    assert "verbatim_context" in message_flags(copied, SimulatorContext(text=", ".join(context_words)))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120), st.text(max_size=200), st.text(max_size=60))
def test_flags_are_deterministic_and_in_a_fixed_order(text, context_text, profile):
    context = SimulatorContext(text=context_text, profile=profile)
    first = message_flags(text, context)
    assert first == message_flags(text, context)
    assert first == [flag for flag in simulator_errors.MESSAGE_FLAGS if flag in first]


# --------------------------------------------------------------------------------------------
# Profile contradictions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I'm 52 years old and tired", ["age"]),
        ("I'm 34 years old", []),
        ("i am 35 years old now", []),  # a birthday since the profile
        ("my name is Sam", ["name"]),
        ("My name is dana, hi", []),
        ("I'm a guy who works late", ["gender"]),
        ("as a mom I worry a lot", []),
        ("I'm a woman and my husband is a man", []),
        ("my brother is 52 years old", []),  # not about the user
    ],
)
def test_stated_name_age_and_gender_are_checked_against_the_profile(text, expected):
    assert profile_contradictions(text, CONTEXT.profile) == expected
    assert ("contradicts_profile" in message_flags(text, CONTEXT)) is bool(expected)


def test_nothing_is_contradicted_without_the_profile_field_or_with_a_placeholder_name():
    stats_only = "Earlier conversations: 2; about 5 messages per conversation, 9 words per message; 20% of messages are questions."
    assert profile_contradictions("I'm 52 years old, my name is Sam, I'm a guy", stats_only) == []
    assert profile_contradictions("my name is Sam", "name: <PERSON_1>") == []
    assert profile_contradictions("I'm 40 years old", "age: 25-34") == ["age"]
    assert profile_contradictions("I'm 30 years old", "user.age: 25-34") == []


# --------------------------------------------------------------------------------------------
# Ending mid-task
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "session, user_ended, expected",
    [
        ([], True, True),  # ended at once
        ([("user", "hi")], True, True),  # in the first user turn
        ([("user", "hi"), ("user", "are you there")], True, True),  # a burst is one turn
        ([("user", "hi"), ("assistant", "Hello! What brings you here?"), ("user", "work"),
          ("assistant", "What happened at work?")], True, True),  # right after a question
        ([("user", "hi"), ("assistant", "Hello! What brings you here?"), ("user", "work"),
          ("assistant", "I'm glad we talked. Take care, bye!"), ("user", "thank you, bye")], True, False),
        ([("user", "hi"), ("assistant", "hey"), ("user", "ok"), ("assistant", "Good night, talk soon?")], True, False),
        ([("user", "hi"), ("assistant", "hey"), ("user", "ok"), ("assistant", "That sounds hard.")], True, False),
        ([("user", "hi"), ("assistant", "What happened?")], False, False),  # the user did not end it
    ],
)
def test_ending_mid_task(session, user_ended, expected):
    roles, texts = [role for role, _ in session], [text for _, text in session]
    assert ended_mid_task(roles, texts, user_ended) is expected


# --------------------------------------------------------------------------------------------
# Per session and rates
# --------------------------------------------------------------------------------------------


def two_sessions():
    messages = messages_frame([
        ("s1", "user", "hi, my week was rough"),
        ("s1", "assistant", "What happened?"),
        ("s1", "user", "How can I help you today?"),
        ("s1", "assistant", "I am the one asking!"),
        ("s2", "user", "work is stressful"),
        ("s2", "assistant", "Take care, bye!"),
    ])
    return messages, {"s1": CONTEXT, "s2": CONTEXT}, {"s1": False, "s2": True}


def test_per_session_counts_flagged_messages_and_the_ending():
    messages, contexts, ended = two_sessions()
    frame = per_session(messages, contexts, ended, ["s1", "s2", "silent"])
    rows = frame.set_index("session_id")
    assert list(frame["session_id"]) == ["s1", "s2", "silent"]
    assert (rows.loc["s1", "user_messages"], rows.loc["s1", "flagged_messages"], rows.loc["s1", "speaks_as_assistant"]) == (2, 1, 1)
    assert rows.loc["s1", "role_break"] == 1 and bool(rows.loc["s1", "flagged"])
    # s2: the user ended in the first turn, no message flag.
    assert rows.loc["s2", "flagged_messages"] == 0 and bool(rows.loc["s2", "ended_mid_task"]) and bool(rows.loc["s2", "flagged"])
    assert rows.loc["silent", "user_messages"] == 0 and not bool(rows.loc["silent", "flagged"])
    assert not bool(rows.loc["silent", "has_context"])


def test_rates_their_intervals_and_counts():
    messages, contexts, ended = two_sessions()
    summary = summarise(per_session(messages, contexts, ended, ["s1", "s2", "silent"]), 500, 0, "test")
    assert (summary["k"], summary["n"], summary["rate"]) == (1, 3, pytest.approx(1 / 3))
    assert summary["rate_ci_low"] <= summary["rate"] <= summary["rate_ci_high"]
    assert (summary["sessions_flagged"], summary["n_sessions"], summary["session_rate"]) == (2, 3, pytest.approx(2 / 3))
    assert (summary["session_rate_ci_low"], summary["session_rate_ci_high"]) == pytest.approx(stats.wilson_interval(2, 3))
    assert summary["messages_by_flag"]["speaks_as_assistant"] == 1 and summary["messages_by_flag"]["role_break"] == 1
    assert summary["sessions_by_flag"]["ended_mid_task"] == 1 and summary["n_sessions_without_context"] == 1


# --------------------------------------------------------------------------------------------
# In evaluate, metrics.json and report.md
# --------------------------------------------------------------------------------------------


def with_broken_sft_session():
    """The synthetic data with one sft session whose first user message speaks as the assistant."""
    data = synthetic()
    sessions, messages, simulations = data["simulated"]["sft"]
    broken = sorted(sessions["session_id"])[0]
    first_user = messages.index[(messages["session_id"] == broken) & (messages["role"] == "user")][0]
    messages = messages.copy()
    messages.loc[first_user, "text"] = "As an AI, how can I help you today?"
    data["simulated"] = {**data["simulated"], "sft": (sessions, messages, simulations)}
    return data, broken


def test_evaluate_reports_the_simulator_error_rate_of_every_group_with_the_real_users_as_control():
    data, broken = with_broken_sft_session()
    metrics = evaluate(**data)
    sft = metrics["groups"]["sft"]["simulator_errors"]
    assert (sft["k"], sft["sessions_flagged"], sft["n"]) == (1, 1, metrics["groups"]["sft"]["n_user_messages"])
    assert metrics["groups"]["real"]["simulator_errors"]["k"] == 0
    flat = report.flat_metrics(metrics)
    for key in ("sft.simulator_errors.rate", "sft.simulator_errors.rate_ci_high", "sft.simulator_errors.session_rate_ci_low",
                "sft.simulator_errors.messages_by_flag.speaks_as_assistant", "real.simulator_errors.rate"):
        assert key in flat
    assert flat["sft.simulator_errors.messages_by_flag.speaks_as_assistant"] == 1
    markdown = report.render_markdown(metrics, {})
    section = markdown.split("## Simulator errors (role adherence)")[1].split("\n## ")[0]
    assert "| real (control) | 0.00%" in section and "false-positive floor" in section
    sft_row = next(line for line in section.splitlines() if line.startswith("| sft |"))
    assert f"(1 / {sft['n']})" in sft_row and "(1 / 18)" in sft_row and "1 sessions out" in sft_row


def test_the_issue_rate_without_broken_sessions_leaves_out_their_messages():
    data, broken = with_broken_sft_session()
    metrics = evaluate(**data)
    issues = metrics["groups"]["sft"]["issues"]
    clean = issues["without_simulator_errors"]
    _, messages, _ = data["simulated"]["sft"]
    broken_chatbot_messages = int(((messages["session_id"] == broken) & (messages["role"] == "assistant")).sum())
    item = next(item for item, session in data["item_sessions"].items() if session == broken)
    broken_flagged = data["issues"][data["issues"]["item_id"] == item].drop_duplicates(["item_id", "turn_index"]).shape[0]
    assert clean["n"] == issues["n"] - broken_chatbot_messages and clean["k"] == issues["k"] - broken_flagged
    assert clean["rate"] == pytest.approx(clean["k"] / clean["n"])
    assert (clean["n_sessions_judged"], clean["n_sessions_excluded"]) == (issues["n_sessions_judged"] - 1, 1)
    assert clean["rate_ci_low"] <= clean["rate"] <= clean["rate_ci_high"]
    # Nothing excluded: the same rate and the same interval (same bootstrap draws).
    it1 = metrics["groups"]["it1"]["issues"]
    assert it1["without_simulator_errors"]["n_sessions_excluded"] == 0
    assert (it1["without_simulator_errors"]["rate"], it1["without_simulator_errors"]["rate_ci_low"]) == (it1["rate"], it1["rate_ci_low"])


def test_a_real_session_its_user_left_after_a_question_counts_as_ended_mid_task_in_the_control_row():
    data = synthetic()
    real = data["real_messages"]
    last_chatbot = real.index[(real["session_id"] == "r0") & (real["role"] == "assistant")][-1]
    data["real_messages"] = real.assign(text=real["text"].where(real.index != last_chatbot, "and then what happened?"))
    user_ended = {"real": {"r0": True}}
    metrics = evaluate(**data, user_ended=user_ended)
    assert metrics["groups"]["real"]["simulator_errors"]["sessions_by_flag"]["ended_mid_task"] == 1
    assert evaluate(**data)["groups"]["real"]["simulator_errors"]["sessions_by_flag"]["ended_mid_task"] == 0


def test_a_copy_of_the_grounding_context_is_found_through_the_simulations_table():
    data = synthetic()
    data["contexts"] = data["contexts"].assign(
        context_text="## This session\nthe person keeps arguing with their sister about the family dinner plans",
        profile="",
    )
    sessions, messages, simulations = data["simulated"]["it1"]
    first_user = messages.index[messages["role"] == "user"][0]
    messages = messages.copy()
    messages.loc[first_user, "text"] = "ugh I keep arguing with their sister about the family dinner plans again"
    data["simulated"] = {**data["simulated"], "it1": (sessions, messages, simulations)}
    errors = evaluate(**data)["groups"]["it1"]["simulator_errors"]
    assert errors["messages_by_flag"]["verbatim_context"] == 1 and errors["n_sessions_without_context"] == 0


def test_sessions_without_a_context_are_counted_and_named_in_the_report():
    data = synthetic()
    data["contexts"] = data["contexts"].drop(columns=["context_text"])
    metrics = evaluate(**data)
    assert metrics["groups"]["sft"]["simulator_errors"]["n_sessions_without_context"] == 18
    assert "had no context to compare with" in report.render_markdown(metrics, {})
    json.dumps(report.flat_metrics(metrics))  # still plain numbers
    assert np.isfinite(metrics["groups"]["sft"]["simulator_errors"]["rate"])
