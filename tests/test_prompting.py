"""One rule (`parse_user_turn`) for every stage that reads a generated user turn: its messages and
whether it ends the conversation; the round trip SFT target -> simulated messages."""

import string

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dial.evaluation.realism import termination_predictions
from dial.simulation.generation import Generated
from dial.pairs import candidate_text
from dial.params import DecodingParams, SftSamplesParams, SimulateParams
from dial.prompting import (
    UserTurn,
    contains_marker,
    join_user_turn,
    parse_user_turn,
    render_instruction,
    simulator_messages,
    trim_cut_turn,
    user_messages_in_turns,
)
from dial.sft_samples import build_sft_samples
from dial.simulation.simulate import SessionState, Simulation

END = "<|endconversation|>"

# Generated turns as a model writes them: plain, marker alone, marker after words, marker in the
# middle, marker with blanks, blank.
GENERATED = ["i feel low", END, f"ok bye {END}", f"thanks {END} see you", f"  {END}  ", "   "]


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("  i feel low ", UserTurn(("i feel low",), ends=False)),
        (END, UserTurn((), ends=True)),
        (f"ok bye {END}", UserTurn(("ok bye",), ends=True)),
        (f"thanks {END} see you", UserTurn(("thanks",), ends=True)),
        ("   ", UserTurn((), ends=False)),
    ],
)
def test_marker_anywhere_ends_and_the_words_before_it_stay(generated, expected):
    assert parse_user_turn(generated, END) == expected


class ScriptedGenerator:
    """Answers each prompt with the text scripted for its context (the system message)."""

    def __init__(self, text_of_context):
        self.text_of_context = text_of_context
        self.max_positions = 0

    def tokenizer(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}

    def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
        return [Generated(text=self.text_of_context[c[0]["content"]], n_tokens=3, hit_max_tokens=False) for c in conversations]

    def forget(self, keys=None):
        pass


class SilentChatbot:
    name = "bot"

    def reply(self, requests):
        from dial.chatbots import ChatReply

        return [ChatReply(text="go on") for _ in requests]

    def forget(self, session_ids):
        pass


def test_simulation_pairs_and_termination_probe_agree_on_the_same_generated_turns():
    text_of_context = {f"ctx {i}": text for i, text in enumerate(GENERATED)}
    generator = ScriptedGenerator(text_of_context)

    states = [
        SessionState(session_id=f"s{i}", real_session_id=f"r{i}", real_user_id="u", chatbot_id="bot", simulation_index=0,
                     seed=i, context_text=f"ctx {i}", current_summary="", topic=None)
        for i in range(len(GENERATED))
    ]
    Simulation(generator, [SilentChatbot()], SimulateParams(max_turns=1), END).run(states, progress=False)
    simulation_ends = [state.stop_reason == "user_ended" for state in states]
    simulation_messages = [tuple(text for role, text in state.history if role == "user") for state in states]

    # Pairs keep an alternative whole (one action); read back, it is what the simulation stored.
    pairs_turns = [parse_user_turn(candidate_text(text, END)[0], END) for text in GENERATED]
    pairs_ends = [turn.ends for turn in pairs_turns]

    ids = [f"r{i}" for i in range(len(GENERATED))]
    messages = pd.DataFrame(
        [(sid, t, role, text) for sid in ids for t, (role, text) in enumerate([("user", "hi"), ("assistant", "hello")])],
        columns=["session_id", "turn_index", "role", "text"],
    )
    contexts = pd.DataFrame({"session_id": ids, "context_text": list(text_of_context)})
    probe = termination_predictions(generator, contexts, pd.DataFrame({"session_id": ids}), messages, END,
                                    DecodingParams(max_new_tokens=8), seed=0, progress=False)
    probe_ends = list(probe.sort_values("session_id")["predicted_end"])

    expected = [parse_user_turn(text, END) for text in GENERATED]
    assert simulation_ends == pairs_ends == probe_ends == [turn.ends for turn in expected]
    assert simulation_messages == [turn.messages for turn in pairs_turns] == [turn.messages for turn in expected]
    assert simulation_ends == [False, True, True, True, True, False]  # the rule, spelled out


SEP = "<|msg|>"


@pytest.mark.parametrize("messages", [("hey",), ("hey", "you there?"), ("a", "b", "c")])
@pytest.mark.parametrize("ends", [False, True])
def test_a_joined_turn_parses_back_to_its_messages(messages, ends):
    assert parse_user_turn(join_user_turn(messages, ends, END, SEP), END, SEP) == UserTurn(messages, ends)


def test_blank_pieces_between_separators_are_dropped():
    assert parse_user_turn(f" hey {SEP}{SEP}  {SEP} you there? {SEP}", END, SEP) == UserTurn(("hey", "you there?"), False)


def test_sft_targets_round_trip_through_the_simulation(tiny_tokenizer):
    """What SFT teaches as a turn (the target) is stored by the simulation as the real messages."""
    history = [("user", "hey"), ("user", "you there?"), ("assistant", "yes hi"), ("user", "ok"),
               ("assistant", "anything else?"), ("user", "no"), ("user", "bye")]
    messages = pd.DataFrame([("s", t, role, text) for t, (role, text) in enumerate(history)],
                            columns=["session_id", "turn_index", "role", "text"])
    samples, _ = build_sft_samples(
        pd.DataFrame({"session_id": ["s"], "user_id": ["u"]}), messages,
        pd.DataFrame({"session_id": ["s"], "context_text": ["CTX"]}), pd.DataFrame({"user_id": ["u"], "split": ["train"]}),
        SftSamplesParams(), tiny_tokenizer, progress=False,
    )
    assert len(samples) == 3
    for sample in samples.itertuples():
        generator = ScriptedGenerator({"CTX": sample.completion})
        (state,) = [SessionState(session_id="x", real_session_id="s", real_user_id="u", chatbot_id="bot",
                                 simulation_index=0, seed=0, context_text="CTX", current_summary="", topic=None)]
        Simulation(generator, [SilentChatbot()], SimulateParams(max_turns=1), END, message_separator=SEP).run([state], progress=False)
        real = tuple(text for _, text in history[sample.target_turn_index : sample.target_turn_index + sample.n_target_messages])
        assert tuple(text for role, text in state.history if role == "user") == real
        assert (state.stop_reason == "user_ended") == sample.is_end


@pytest.mark.parametrize("n_turns, expected", [(0, 0), (1, 2), (2, 3), (3, 5), (9, 5)])
def test_a_burst_of_user_messages_counts_as_one_turn(n_turns, expected):
    roles = ["assistant", "user", "user", "assistant", "user", "assistant", "assistant", "user", "user"]
    assert user_messages_in_turns(roles, n_turns) == expected


def test_the_default_instruction_names_the_strings_the_simulation_parses():
    from dial.params import DEFAULT_INSTRUCTION

    rendered = render_instruction(DEFAULT_INSTRUCTION, END, SEP)
    assert END in rendered and SEP in rendered and "{" not in rendered
    assert render_instruction("keep {braces} {end_marker}", END, SEP) == f"keep {{braces}} {END}"


def test_the_history_renders_a_user_burst_as_the_one_turn_the_simulator_wrote():
    sep = SftSamplesParams().message_separator
    history = [("assistant", "welcome"), ("assistant", "how can I help?"), ("user", "hi"), ("user", "you there?"),
               ("assistant", "yes"), ("user", "ok")]
    rendered = simulator_messages("CTX", history, sep)
    # The chatbot's burst stays two messages (the simulator never writes them); the user's is one.
    assert rendered == [
        {"role": "system", "content": "CTX"},
        {"role": "user", "content": "welcome"},
        {"role": "user", "content": "how can I help?"},
        {"role": "assistant", "content": f"hi{sep}you there?"},
        {"role": "user", "content": "yes"},
        {"role": "assistant", "content": "ok"},
    ]
    # Each assistant message is the turn as written: it parses back to the user's messages.
    turns = [parse_user_turn(m["content"], END, sep).messages for m in rendered if m["role"] == "assistant"]
    assert turns == [("hi", "you there?"), ("ok",)]
    assert rendered[3]["content"] == join_user_turn(["hi", "you there?"], False, END, sep)


# Debris the default SFT simulator wrote (reports of the default run): malformed and cut markers.
@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("</|msg|>But its personal things", UserTurn(("But its personal things",), False)),
        ("ok|msg|>bye", UserTurn(("ok", "bye"), False)),
        ("hey </|msg| > you there?", UserTurn(("hey", "you there?"), False)),
        ("I can play guitar<|", UserTurn(("I can play guitar",), False)),
        ("see you <|ms", UserTurn(("see you",), False)),
        ("</|msg| >|endconversation|></|msg|>Slaughter<|msg|", UserTurn((), True)),
        ("ok bye endconversation|>", UserTurn(("ok bye",), True)),
        ("</|msg|", UserTurn((), False)),
        # Text a user writes stays as written.
        ("a | b", UserTurn(("a | b",), False)),
        ("i <3 u", UserTurn(("i <3 u",), False)),
        ("msg me later, endconversation is a word", UserTurn(("msg me later, endconversation is a word",), False)),
        ("a <b> c </b>", UserTurn(("a <b> c </b>",), False)),
    ],
)
def test_malformed_and_cut_markers_count_as_markers_and_leave_no_debris(generated, expected):
    assert parse_user_turn(generated, END, SEP) == expected


def test_contains_marker_reads_markers_as_parse_user_turn_does():
    assert contains_marker(f"you{SEP}there", END, SEP) and contains_marker("you |msg|> there", END, SEP)
    assert contains_marker(f"bye {END}", END, SEP) and contains_marker("bye |endconversation", END, SEP)
    assert not contains_marker("a | b <3 msg me", END, SEP)


# No "|" and no "<": text that can hold no marker, written or malformed.
_plain_message = st.text(alphabet=string.ascii_letters + string.digits + " .,!?'>/:()-", min_size=1, max_size=30).map(
    str.strip
).filter(lambda message: message.strip("<>|/ ") != "")


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(_plain_message, min_size=1, max_size=4), ends=st.booleans())
def test_a_joined_turn_of_plain_messages_parses_back_exactly(messages, ends):
    assert parse_user_turn(join_user_turn(messages, ends, END, SEP), END, SEP) == UserTurn(tuple(messages), ends)


def test_a_cut_turn_is_trimmed_to_its_last_complete_sentence():
    assert trim_cut_turn(UserTurn(("i slept badly. then i kept wak",), False)) == UserTurn(("i slept badly.",), False)
    assert trim_cut_turn(UserTurn(('he said "no!" and then',), False)) == UserTurn(('he said "no!"',), False)
    assert trim_cut_turn(UserTurn(("well... maybe i could tr",), False)) == UserTurn(("well...",), False)
    assert trim_cut_turn(UserTurn(("it ended right here.",), False)) == UserTurn(("it ended right here.",), False)
    assert trim_cut_turn(UserTurn(("version 3.5 of the",), False)) is None  # no sentence end: stays cut
    assert trim_cut_turn(UserTurn(("hi", "and then i was go"), False)) == UserTurn(("hi",), False)  # burst: drop the cut message
    ending = UserTurn(("bye",), True)
    assert trim_cut_turn(ending) is ending  # an ending turn is whole


@given(st.lists(st.text(alphabet=string.ascii_lowercase + " .!?", min_size=1, max_size=40), min_size=1, max_size=3))
def test_a_trimmed_turn_is_a_prefix_of_the_cut_one_and_ends_at_a_sentence(messages):
    messages = tuple(message.strip() for message in messages if message.strip())
    if not messages:
        return
    trimmed = trim_cut_turn(UserTurn(messages, False))
    if trimmed is None:
        assert len(messages) == 1
        return
    assert trimmed.messages[:-1] == messages[: len(trimmed.messages) - 1] and not trimmed.ends
    last = trimmed.messages[-1]
    original = messages[len(trimmed.messages) - 1]
    assert original.startswith(last)
    assert last == original or last[-1] in ".!?"


def test_pairs_keep_a_cut_alternative_trimmed_as_the_simulation_would():
    assert candidate_text("fine. and th", END, hit_max_tokens=True) == ("fine.", None)
    text, status = candidate_text("and then i", END, hit_max_tokens=True)
    assert (text, status) == ("and then i", "truncated")
    assert candidate_text(f"ok bye {END} and", END, hit_max_tokens=True) == (f"ok bye<|msg|>{END}", None)  # ends: whole
