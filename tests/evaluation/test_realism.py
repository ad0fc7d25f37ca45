"""UserLM realism metrics: first-turn diversity, intent decomposition and dialogue termination
(positions, F1, and the batched probe with the tiny model)."""

from __future__ import annotations

import json

import torch

torch.set_num_threads(1)

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dial import io  # noqa: E402
from dial.errors import DialError  # noqa: E402
from dial.evaluation import realism  # noqa: E402
from dial.params import DecodingParams  # noqa: E402
from dial.prompting import simulator_messages  # noqa: E402


def messages(rows):
    """rows: (session_id, role, text) in turn order per session."""
    frame = pd.DataFrame(rows, columns=["session_id", "role", "text"])
    frame["turn_index"] = frame.groupby("session_id").cumcount()
    return frame


def test_first_turn_diversity_is_unique_over_all_first_turn_tokens():
    frame = messages([
        ("a", "user", "Hi there"), ("a", "assistant", "hello"), ("a", "user", "ignored later turn"),
        ("b", "assistant", "the chatbot spoke first"), ("b", "user", "hi you"),
        ("c", "assistant", "no user at all"),
    ])
    result = realism.first_turn_diversity(frame, ["a", "b", "c"])
    # first turns "hi there", "hi you": 4 tokens, 3 distinct.
    assert result == {"value": 0.75, "n_first_turns": 2, "n_sessions_without_user_message": 1, "n_tokens": 4, "n_types": 3}
    assert realism.first_turn_diversity(messages([("x", "assistant", "hey")]), ["x"])["value"] is None


def test_intent_overlap_ignores_stop_words():
    # content words {love, dog, rex}; of them only "dog" is in the intent.
    assert realism.intent_overlap("I love my dog Rex", "the user talks about their dog") == pytest.approx(1 / 3)
    assert realism.intent_overlap("and the of", "anything") is None
    assert realism.intent_overlap("dog", "Dog!") == 1.0


def test_intent_reference_leaves_out_the_sessions_own_summary():
    summary = "Conversation prompt (shown to both speakers): dogs and cats\nkeywords: exam stress"
    reference = realism.intent_reference(summary, "recurring topics: work", json.dumps(["On 2020-01-01: holidays"]))
    assert reference == "Conversation prompt (shown to both speakers): dogs and cats\nrecurring topics: work\nOn 2020-01-01: holidays"
    # No topic line: the summary (built from the session's own words) contributes nothing.
    assert realism.intent_reference("keywords: exam stress", "", "[]") == ""


def test_intent_decomposition_measures_against_the_context_before_the_session():
    contexts = pd.DataFrame({
        "session_id": ["r1", "r2", "r3"],
        "current_summary": ["keywords: dog walking", "Conversation prompt (shown to both speakers): exam\nexam tomorrow", "keywords: dog"],
        "long_term": ["", "", ""],
        "previous_summaries": [json.dumps(["the user talked about a dog"]), "[]", "[]"],
    })
    frame = messages([
        ("r1", "user", "my dog"), ("r1", "assistant", "ok"), ("r1", "user", "so"),  # {dog} in the earlier summary: 1.0; no content word
        ("sim", "user", "exam exam tomorrow"),  # grounded on r2: "exam" is in the prompt, "tomorrow" only in the summary → 1/2
        ("r3", "user", "dog"),  # a first session without a topic: no reference
    ])
    result = realism.intent_decomposition(frame, {"r1": "r1", "sim": "r2", "r3": "r3"}, contexts)
    assert result["value"] == pytest.approx(0.75)
    assert (result["n_user_messages"], result["n_without_content_words"]) == (3, 1)
    assert (result["n_sessions"], result["n_sessions_without_reference"]) == (2, 1)
    with pytest.raises(DialError, match="r9"):
        realism.intent_decomposition(frame, {"sim": "r9"}, contexts)
    with pytest.raises(DialError, match="previous_summaries"):
        realism.intent_decomposition(frame, {"r1": "r1"}, contexts.drop(columns="previous_summaries"))


def test_termination_positions_follow_each_run_of_chatbot_messages():
    frame = messages([
        ("s", "user", "a"), ("s", "assistant", "b"), ("s", "assistant", "c"), ("s", "user", "d"), ("s", "assistant", "e"),
        ("t", "user", "a"), ("t", "assistant", "b"), ("t", "user", "c"), ("t", "user", "d"),  # a last user turn, then the end
        ("u", "user", "only the user"),
    ])
    positions = realism.termination_positions(frame, ["s", "t", "u"])
    assert positions.to_dict("records") == [
        {"session_id": "s", "turn_index": 2, "is_end": False},
        {"session_id": "s", "turn_index": 4, "is_end": True},
        {"session_id": "t", "turn_index": 1, "is_end": True},
    ]


def predictions(rows):
    return pd.DataFrame(rows, columns=["session_id", "turn_index", "is_end", "predicted_end", "status"])


def test_termination_f1_hand_computed():
    frame = predictions([
        ("a", 1, False, False, "generated"), ("a", 3, True, True, "generated"),   # TP
        ("b", 1, False, True, "generated"), ("b", 3, True, False, "generated"),    # FP, FN
        ("c", 1, True, True, "generated"),                                          # TP
        ("d", 1, True, False, "over_max_positions"),                                # not scored
    ])
    result = realism.termination_f1(frame)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert (result["n_positions"], result["n_not_scored"], result["true_positives"], result["n_sessions"]) == (5, 1, 2, 3)
    never = realism.termination_f1(predictions([("a", 1, True, False, "generated")]))
    assert never["precision"] is None and never["recall"] == 0.0 and never["f1"] == 0.0
    assert realism.termination_f1(predictions([("a", 1, False, False, "generated")]))["f1"] is None


def test_select_sessions_is_seeded_and_order_independent():
    ids = [f"s{i}" for i in range(20)]
    chosen = realism.select_sessions(ids, 5, seed=3)
    assert chosen == realism.select_sessions(list(reversed(ids)), 5, seed=3) and len(chosen) == 5
    assert chosen != realism.select_sessions(ids, 5, seed=4)
    assert realism.select_sessions(ids, 0, seed=3) == sorted(ids)


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    from dial.simulation.generation import ChatGenerator

    return ChatGenerator.load(tiny_model_dir, precision="fp32", batch_size=4)


def probe_inputs():
    frame = messages([
        ("r1", "user", "hey how are you"), ("r1", "assistant", "fine thanks"), ("r1", "user", "ok bye"),
        ("r1", "assistant", "bye"),
        ("r2", "user", "my exam is tomorrow"), ("r2", "assistant", "good luck"),
    ])
    frame["timestamp"], frame["metadata"] = None, "{}"
    sessions = pd.DataFrame({"session_id": ["r1", "r2"]})
    contexts = pd.DataFrame({"session_id": ["r1", "r2"], "context_text": ["You are a student.", "You are tired."]})
    return contexts, sessions, frame


def test_termination_probe_generates_every_position_with_its_own_seed(generator):
    contexts, sessions, frame = probe_inputs()
    sampled = DecodingParams(temperature=1.0, max_new_tokens=8)  # (greedy: the random model ends at once)
    first = realism.termination_predictions(generator, contexts, sessions, frame, "<|endconversation|>", sampled, seed=0,
                                            simulator_id="sft", progress=False)
    assert list(first.columns) == realism.TERMINATION_COLUMNS
    assert list(zip(first["session_id"], first["turn_index"], first["is_end"])) == [("r1", 1, False), ("r1", 3, True), ("r2", 1, True)]
    assert (first["status"] == "generated").all() and (first["simulator_id"] == "sft").all()
    io.TERMINATION_PREDICTIONS.validate(first)
    # Any output prefix is a valid "marker": the comparison is "the output starts with the marker".
    marker = first["generated"].iloc[0].strip()[:3]
    assert marker
    probed = realism.termination_predictions(generator, contexts, sessions, frame, marker, sampled, seed=0, progress=False)
    assert probed["generated"].tolist() == first["generated"].tolist()  # seeded per position: same outputs
    assert probed["predicted_end"].tolist() == [text.strip().startswith(marker) for text in probed["generated"]]
    assert probed["predicted_end"].iloc[0]


def test_termination_probe_counts_prompts_beyond_the_window(generator):
    contexts, sessions, frame = probe_inputs()
    decoding = DecodingParams(temperature=1.0, top_p=0.9, max_new_tokens=8)
    lengths = [len(ids) for ids in generator.prompt_ids([
        simulator_messages("You are a student.", [("user", "hey how are you"), ("assistant", "fine thanks")])
    ])]
    saved = generator.max_positions
    generator.max_positions = lengths[0] + 8  # the first r1 position fits; the longer one does not
    try:
        result = realism.termination_predictions(generator, contexts, sessions, frame, "<|endconversation|>", decoding, seed=1, progress=False)
    finally:
        generator.max_positions = saved
    statuses = dict(zip(zip(result["session_id"], result["turn_index"]), result["status"]))
    assert statuses[("r1", 1)] == "generated" and statuses[("r1", 3)] == "over_max_positions"
    skipped = result[result["status"] == "over_max_positions"]
    assert (skipped["generated"] == "").all() and not skipped["predicted_end"].any()
    assert realism.termination_f1(result)["n_not_scored"] == len(skipped)


def test_termination_probe_refuses_too_few_tokens_and_missing_contexts(generator):
    contexts, sessions, frame = probe_inputs()
    with pytest.raises(DialError, match="max_new_tokens"):
        realism.termination_predictions(generator, contexts, sessions, frame, "<|endconversation|>",
                                        DecodingParams(max_new_tokens=1), seed=0, progress=False)
    with pytest.raises(DialError, match="no context"):
        realism.termination_predictions(generator, contexts.iloc[:1], sessions, frame, "<|endconversation|>",
                                        DecodingParams(max_new_tokens=12), seed=0, progress=False)


def test_termination_positions_can_be_capped_to_the_last_ones(tiny_model_dir):
    """Only the last N positions of each session are probed (the real ending among them)."""
    import torch

    from dial.simulation.generation import ChatGenerator
    from dial.params import DecodingParams

    torch.set_num_threads(1)
    generator = ChatGenerator.load(tiny_model_dir, None, "fp32", 8)
    rows = []
    for t in range(10):
        rows.append(("s1", t, "user" if t % 2 == 0 else "assistant", f"message {t}"))
    messages = pd.DataFrame(rows, columns=["session_id", "turn_index", "role", "text"])
    sessions = pd.DataFrame({"session_id": ["s1"]})
    contexts = pd.DataFrame({"session_id": ["s1"], "context_text": ["be the user"]})
    decoding = DecodingParams(temperature=1.0, top_p=1.0, max_new_tokens=12)
    predictions = realism.termination_predictions(generator, contexts, sessions, messages, "<|endconversation|>",
                                                  decoding, 0, progress=False, max_positions_per_session=2)
    assert list(predictions["turn_index"]) == [7, 9]
    assert list(predictions["is_end"]) == [False, True]
