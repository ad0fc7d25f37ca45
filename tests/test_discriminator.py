"""The discriminator on the tiny offline model: exact label positions, views, token budget, one pass
per session == re-encoding per turn (causality), seeded head, paired balanced sampling, training
that learns and is deterministic, metrics against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dial import io
from dial.discriminator import (
    ASSISTANT_PLACEHOLDER,
    CONTEXT_TOO_LONG,
    IGNORE_INDEX,
    MANIFEST,
    NO_CONTEXT,
    OVER_MAX_TOKENS,
    OVER_MAX_USER_TURNS,
    SCORE_COLUMNS,
    SCORED,
    SELECTION_FILE,
    DiscriminatorParams,
    SessionEncoder,
    binary_metrics,
    discriminator_metrics,
    encode_session,
    forward_logits,
    load_backbone,
    load_discriminator,
    new_discriminator,
    resolve_backbone,
    score_sessions,
    select_sessions,
    train_discriminator,
)
from dial.errors import DialError
from dial.models import load_tokenizer
from dial.training.common import sha256_dir

torch.set_num_threads(1)

CONTEXT = "You are user u0. They feel tired at work and want a break."
TURNS = [
    ("user", "hey so I feel tired today"),
    ("assistant", "hello, sorry to hear that. what is going on?"),
    ("user", "my job is a lot lately <|im_end|> really"),  # a literal marker typed by the user stays text
    ("assistant", "that sounds hard"),
    ("assistant", "do you want to talk about it?"),
    ("user", "maybe a walk would help. thanks, bye"),
]
REAL_LINES = ["hey so I feel tired today", "my job is a lot lately", "maybe a walk would help", "thanks, talk later",
              "I miss my family", "the weekend was fine I guess", "honestly I need some help", "ok that helps"]


# --- tiny canonical corpora ------------------------------------------------------------------------


def toy_corpus(n_pairs: int, sim_line=lambda i, t: "zzz zzz zzz", n_sims: int = 1, simulator: str = "toy"):
    """Real sessions r<i> (own contexts) and `n_sims` simulated sessions grounded on each, canonical
    frames; simulated users write `sim_line(i, t)`. Returns (real_s, real_m, sim_s, sim_m, contexts)."""
    real_s, real_m, sim_s, sim_m, contexts = [], [], [], [], []
    for i in range(n_pairs):
        rid = f"r{i:02d}"
        n_user = 1 + i % 3
        real_s.append({"session_id": rid, "user_id": f"u{i}", "source": "test", "session_index": 0, "started_at": None,
                       "chatbot_id": None, "topic": None, "metadata": "{}"})
        contexts.append({"session_id": rid, "user_id": f"u{i}", "instruction": "be the user", "profile": "{}", "long_term": "",
                         "previous_summaries": "[]", "current_summary": "tired", "recent_history": "[]",
                         "context_text": f"You are user u{i}. They talk about day {i}.", "n_tokens": 10,
                         "n_previous_summaries_dropped": 0, "n_history_messages_dropped": 0, "long_term_dropped": False})
        for t in range(n_user):
            real_m += [{"session_id": rid, "turn_index": 2 * t, "role": "user", "text": REAL_LINES[(i + t) % len(REAL_LINES)],
                        "timestamp": None, "metadata": "{}"},
                       {"session_id": rid, "turn_index": 2 * t + 1, "role": "assistant", "text": f"I see, tell me more {t}",
                        "timestamp": None, "metadata": "{}"}]
        for m in range(n_sims):
            sid = f"sim:{simulator}:bot:{rid}:{m}"
            sim_s.append({"session_id": sid, "user_id": f"sim:{simulator}:u{i}", "source": f"simulated:{simulator}",
                          "session_index": m, "started_at": None, "chatbot_id": "bot", "topic": None,
                          "metadata": json.dumps({"real_session_id": rid, "chatbot_id": "bot", "simulator_id": simulator})})
            for t in range(n_user):
                sim_m += [{"session_id": sid, "turn_index": 2 * t, "role": "user", "text": sim_line(i, t), "timestamp": None, "metadata": "{}"},
                          {"session_id": sid, "turn_index": 2 * t + 1, "role": "assistant", "text": f"Bot says {t}",
                           "timestamp": None, "metadata": "{}"}]
    frames = [pd.DataFrame(rows) for rows in (real_s, real_m, sim_s, sim_m, contexts)]
    schemas = [io.SESSIONS, io.MESSAGES, io.SESSIONS, io.MESSAGES, io.CONTEXTS]
    return tuple(schema.validate(frame) for schema, frame in zip(schemas, frames))


def tiny_params(**overrides) -> DiscriminatorParams:
    base = dict(n_train=10, n_valid=4, epochs=3, learning_rate=5e-3, batch_size=2, max_tokens=256, score_batch_size=3)
    return DiscriminatorParams(**{**base, **overrides})


# --- encoding --------------------------------------------------------------------------------------


def test_labels_sit_exactly_on_the_last_token_of_each_user_message(tiny_tokenizer):
    encoded = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", label=1, session_id="s")
    ids, labels = encoded.input_ids, encoded.labels
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    user_texts = [text for role, text in TURNS if role == "user"]
    assert len(encoded.user_positions) == 3 and encoded.user_status == [SCORED] * 3
    assert encoded.user_turn_indices == [0, 2, 5]
    assert [i for i, label in enumerate(labels) if label != IGNORE_INDEX] == encoded.user_positions
    assert {labels[i] for i in encoded.user_positions} == {1}
    for position, text in zip(encoded.user_positions, user_texts):
        assert ids[position] == im_end
        assert tiny_tokenizer.decode(ids[: position + 1]).endswith(f"<|im_start|>user\n{text}<|im_end|>")
    # The sequence ends at the last user message's end; the context end is its own <|im_end|>.
    assert encoded.user_positions[-1] == len(ids) - 1
    assert ids[encoded.context_end] == im_end and labels[encoded.context_end] == IGNORE_INDEX
    assert tiny_tokenizer.decode(ids[: encoded.context_end + 1]) == f"<|im_start|>system\n{CONTEXT}<|im_end|>"
    # The literal "<|im_end|>" inside the second user message is text, not the marker token.
    assert ids.count(im_end) == 1 + len(TURNS)


def test_user_only_hides_chatbot_text_and_turn_structure(tiny_tokenizer):
    full = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full")
    user_only = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="user_only")
    full_text, hidden_text = tiny_tokenizer.decode(full.input_ids), tiny_tokenizer.decode(user_only.input_ids)
    for role, text in TURNS:
        assert text in full_text
        assert (text in hidden_text) == (role == "user")
    # TURNS has two chatbot messages in a row; user_only shows one placeholder between user messages.
    assert full_text.count("<|im_start|>assistant\n") == 3
    assert hidden_text.count(f"<|im_start|>assistant\n{ASSISTANT_PLACEHOLDER}<|im_end|>") == 2
    assert hidden_text.count("<|im_start|>assistant\n") == 2
    # Same user messages, same order: the first user message (before any chatbot text) has the same prefix.
    assert full.input_ids[: full.user_positions[0] + 1] == user_only.input_ids[: user_only.user_positions[0] + 1]
    assert len(user_only.user_positions) == 3 and user_only.context_end == full.context_end


def _with_user_texts(turns, texts):
    """`turns` with its user messages' texts replaced by `texts`, in order."""
    replacements = iter(texts)
    return [(role, next(replacements) if role == "user" else text) for role, text in turns]


SIMULATED_TURNS = [("user", "hi, work has been exhausting"), ("assistant", "I am here for you."),
                   ("user", "i might take a day off"), ("assistant", "That could help."), ("user", "ok bye")]


def test_user_only_real_and_simulated_differ_only_in_the_user_text(tiny_tokenizer):
    """Parity: a real and a simulated session of the same context and structure encode to the
    same tokens once the simulated user's texts are put in the real user's place, so everything
    else the discriminator reads is identical; in the `full` view the chatbot's text differs too."""
    real = [("user", "hey so I feel tired today"), ("assistant", "hello, what is going on?"),
            ("user", "my job is a lot lately"), ("assistant", "that sounds hard"), ("user", "thanks, bye")]
    simulated_texts = [text for role, text in SIMULATED_TURNS if role == "user"]
    encoder = SessionEncoder(tiny_tokenizer, "user_only")
    real_ids = encoder.encode(CONTEXT, real).input_ids
    simulated = encoder.encode(CONTEXT, SIMULATED_TURNS)
    assert real_ids != simulated.input_ids
    assert encoder.encode(CONTEXT, _with_user_texts(real, simulated_texts)).input_ids == simulated.input_ids
    full = SessionEncoder(tiny_tokenizer, "full")
    assert full.encode(CONTEXT, _with_user_texts(real, simulated_texts)).input_ids != full.encode(CONTEXT, SIMULATED_TURNS).input_ids


@pytest.mark.parametrize(
    "real_structure",
    [
        ["user", "user", "assistant", "user"],  # a burst of two user messages
        ["assistant", "user", "assistant", "user", "user"],  # the chatbot opens; a burst at the end
        ["user", "assistant", "assistant", "assistant", "user", "assistant", "user"],  # chatbot messages in a row
    ],
)
def test_user_only_shows_no_structure_a_simulated_session_cannot_have(tiny_tokenizer, real_structure):
    """Real users send bursts, open after a greeting and get several chatbot messages in a row;
    simulated sessions strictly alternate, user first. With the same user texts both encode to
    the same tokens and label positions, so the placeholders give nothing away."""
    user_texts = [text for role, text in SIMULATED_TURNS if role == "user"]
    real = _with_user_texts([(role, "chatbot says something") for role in real_structure], user_texts)
    encoder = SessionEncoder(tiny_tokenizer, "user_only")
    real_encoded, simulated_encoded = encoder.encode(CONTEXT, real), encoder.encode(CONTEXT, SIMULATED_TURNS)
    assert real_encoded.input_ids == simulated_encoded.input_ids
    assert real_encoded.user_positions == simulated_encoded.user_positions
    full = SessionEncoder(tiny_tokenizer, "full")
    assert full.encode(CONTEXT, real).input_ids != full.encode(CONTEXT, SIMULATED_TURNS).input_ids


def test_token_budget_drops_the_tail_never_the_context_and_counts(tiny_tokenizer):
    whole = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full")
    cut = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", max_tokens=whole.user_positions[1] + 1)
    assert cut.user_status == [SCORED, SCORED, OVER_MAX_TOKENS]
    assert cut.input_ids == whole.input_ids[: whole.user_positions[1] + 1]  # a prefix: same p_t for kept turns
    one_short = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", max_tokens=whole.user_positions[1])
    assert one_short.user_status == [SCORED, OVER_MAX_TOKENS, OVER_MAX_TOKENS]
    no_room = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", max_tokens=whole.context_end + 1)
    assert no_room.user_status == [OVER_MAX_TOKENS] * 3 and no_room.context_end == whole.context_end
    too_long = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", max_tokens=whole.context_end)
    assert too_long.user_status == [CONTEXT_TOO_LONG] * 3 and too_long.context_end is None
    turns_cut = encode_session(tiny_tokenizer, CONTEXT, TURNS, view="full", max_user_turns=2)
    assert turns_cut.user_status == [SCORED, SCORED, OVER_MAX_USER_TURNS]
    assert encode_session(tiny_tokenizer, None, TURNS).user_status == [NO_CONTEXT] * 3


@pytest.mark.parametrize("view", ["full", "user_only"])
def test_max_user_turns_counts_a_burst_once(tiny_tokenizer, view):
    burst = [("user", "hey"), ("user", "you there?"), ("assistant", "yes"), ("user", "ok then"), ("assistant", "sure"),
             ("user", "bye")]
    cut = encode_session(tiny_tokenizer, CONTEXT, burst, view=view, max_user_turns=2)
    assert cut.user_status == [SCORED, SCORED, SCORED, OVER_MAX_USER_TURNS]
    whole = encode_session(tiny_tokenizer, CONTEXT, burst, view=view)
    assert cut.input_ids == whole.input_ids[: whole.user_positions[2] + 1]


# --- model -----------------------------------------------------------------------------------------


def test_head_on_a_causal_lm_checkpoint_is_new_and_seeded(tiny_model_dir):
    a, b, c = load_backbone(tiny_model_dir, 0), load_backbone(tiny_model_dir, 0), load_backbone(tiny_model_dir, 1)
    assert a.config.num_labels == 1 and a.score.out_features == 1
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, c.score.weight)
    assert float(a.score.weight.detach().abs().sum()) > 0
    model = new_discriminator(tiny_model_dir, DiscriminatorParams())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("score" in name for name in trainable) and any("lora_A" in name for name in trainable)
    assert not any("lora" in name and "score" in name for name in trainable)  # the head is trained fully, not LoRA'd
    assert any("mlp.down_proj.lora_A" in name for name in trainable) and any("self_attn.q_proj.lora_A" in name for name in trainable)


@pytest.mark.parametrize("view", ["full", "user_only"])
def test_one_pass_per_session_equals_reencoding_after_each_user_turn(tiny_model_dir, tiny_tokenizer, view):
    """The core property: p_t from one (batched, right-padded) pass over the whole session equals
    the last output of the session truncated after user message t; p_0 = the context alone."""
    model = new_discriminator(tiny_model_dir, DiscriminatorParams(seed=3))
    with torch.no_grad():  # a non-trivial head and LoRA, so the test is not vacuous
        model.base_model.model.score.modules_to_save["default"].weight.normal_(0, 1.0)
    encoder = SessionEncoder(tiny_tokenizer, view, max_tokens=4096)
    sessions = [TURNS, TURNS[:2], [("assistant", "welcome back")] + TURNS[1:]]
    whole = [encoder.encode(CONTEXT, turns) for turns in sessions]
    one_pass = forward_logits(model, tiny_tokenizer, whole, batch_size=3)  # different lengths: padding
    for turns, encoded, logits in zip(sessions, whole, one_pass):
        user_at = [i for i, (role, _) in enumerate(turns) if role == "user"]
        prefixes = [encoder.encode(CONTEXT, turns[: i + 1]) for i in user_at]
        context_only = encoder.encode(CONTEXT, [])
        separate = forward_logits(model, tiny_tokenizer, [context_only] + prefixes, batch_size=1)
        assert len(logits) == 1 + len(user_at)
        np.testing.assert_allclose(logits[0], separate[0][0], atol=1e-5)
        for t, prefix in enumerate(prefixes, start=1):
            assert prefix.input_ids == encoded.input_ids[: len(prefix.input_ids)]
            np.testing.assert_allclose(logits[t], separate[t][-1], atol=1e-5)
    assert np.std(np.concatenate(one_pass)) > 1e-3


def test_score_sessions_has_a_row_for_every_user_message(tiny_model_dir, tiny_tokenizer):
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(3)
    sessions, messages = pd.concat([real_s, sim_s]), pd.concat([real_m, sim_m])
    model = new_discriminator(tiny_model_dir, DiscriminatorParams())
    scores = score_sessions(model, tiny_tokenizer, sessions, messages, contexts, "user_only", max_user_turns=2, batch_size=2)
    assert list(scores.columns) == SCORE_COLUMNS
    assert len(scores) == (messages["role"] == "user").sum()
    assert scores.groupby("session_id")["user_turn_number"].apply(list).tolist() == [[1], [1, 2], [1, 2, 3]] * 2
    over = scores["status"] == OVER_MAX_USER_TURNS
    assert over.sum() == 2 and scores.loc[over, "logit"].isna().all() and scores.loc[~over, "logit"].notna().all()
    assert scores["logit_0"].notna().all()
    np.testing.assert_allclose(scores.loc[~over, "p_real"], 1 / (1 + np.exp(-scores.loc[~over, "logit"])))
    assert scores["is_real"].sum() == 6
    # A real session and the simulation grounded on it share the context prefix, hence p_0.
    p0 = scores.groupby("session_id")["logit_0"].first()
    assert p0["r01"] == pytest.approx(p0["sim:toy:bot:r01:0"], abs=1e-6)


# --- sampling --------------------------------------------------------------------------------------


def test_sampling_is_balanced_paired_grouped_and_seeded(tiny_tokenizer):
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(12, n_sims=3)
    # An extra real session that grounds no simulation, and one simulation without any user message.
    extra = real_s.iloc[[0]].assign(session_id="lonely", user_id="lonely")
    real_s = pd.concat([real_s, extra], ignore_index=True)
    sim_m = sim_m[sim_m["session_id"] != "sim:toy:bot:r03:0"]
    encoder = SessionEncoder(tiny_tokenizer, "user_only", 256)
    params = DiscriminatorParams(n_train=7, n_valid=3, seed=5, valid_simulations="paired")
    selection = select_sessions(params, encoder, real_s, real_m, sim_s, sim_m, contexts)
    frame = selection.frame
    for split, n in (("train", 7), ("valid", 3)):
        part = frame[frame["split"] == split]
        assert part["is_real"].sum() == n and (~part["is_real"]).sum() == n
    # Every grounding real session contributes itself and exactly one simulation, in the same split.
    per_group = frame.groupby("grounding_session_id").agg(n=("session_id", "size"), splits=("split", "nunique"), real=("is_real", "sum"))
    assert (per_group["n"] == 2).all() and (per_group["splits"] == 1).all() and (per_group["real"] == 1).all()
    assert "lonely" not in set(frame["session_id"])
    assert selection.counts["pairs_available"] == 12 and selection.counts["simulated_sessions_unusable"] == 1
    assert selection.counts["simulated_sessions_unused"] == 36 - 10
    assert {item.label for item in selection.items("train")} == {0, 1}
    again = select_sessions(params, encoder, real_s, real_m, sim_s, sim_m, contexts)
    pd.testing.assert_frame_equal(frame, again.frame)
    other = select_sessions(params.model_copy(update={"seed": 6}), encoder, real_s, real_m, sim_s, sim_m, contexts)
    assert not frame.equals(other.frame)
    # Another simulator with the same protocol gets the same real sessions and chatbot/simulation index.
    renamed = sim_s.assign(session_id=sim_s["session_id"].str.replace("sim:toy:", "sim:other:"),
                           source="simulated:other")
    renamed_m = sim_m.assign(session_id=sim_m["session_id"].str.replace("sim:toy:", "sim:other:"))
    paired = select_sessions(params, encoder, real_s, real_m, renamed, renamed_m, contexts).frame
    assert list(paired["session_id"].str.replace("sim:other:", "sim:toy:")) == list(frame["session_id"])
    # Fewer pairs than asked for: proportionally fewer, still balanced, never an empty valid split.
    few = select_sessions(DiscriminatorParams(n_train=80, n_valid=20), encoder, real_s, real_m, sim_s, sim_m, contexts)
    assert (few.counts["pairs_train"], few.counts["pairs_valid"]) == (10, 2)


def test_all_simulations_of_a_held_out_context_are_held_out_and_the_real_session_weighs_as_many(tiny_tokenizer):
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(12, n_sims=3)
    sim_m = sim_m[sim_m["session_id"] != "sim:toy:bot:r03:0"]  # one simulation without a user message
    encoder = SessionEncoder(tiny_tokenizer, "user_only", 256)
    paired = select_sessions(DiscriminatorParams(n_train=7, n_valid=3, seed=5, valid_simulations="paired"),
                             encoder, real_s, real_m, sim_s, sim_m, contexts)
    every = select_sessions(DiscriminatorParams(n_train=7, n_valid=3, seed=5, valid_simulations="all"),
                            encoder, real_s, real_m, sim_s, sim_m, contexts)
    train = lambda frame: frame[frame["split"] == "train"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(train(paired.frame), train(every.frame))  # training is untouched
    assert (train(every.frame)["weight"] == 1.0).all()
    valid = every.frame[every.frame["split"] == "valid"]
    real_valid = valid[valid["is_real"]]
    assert list(real_valid["session_id"]) == list(paired.frame.query("split == 'valid' and is_real")["session_id"])
    usable = set(sim_s["session_id"]) & set(sim_m["session_id"])
    for real_id, weight in zip(real_valid["session_id"], real_valid["weight"]):
        held_out = valid[~valid["is_real"] & (valid["grounding_session_id"] == real_id)]
        expected = {sid for sid in usable if sid.startswith(f"sim:toy:bot:{real_id}:")}
        assert set(held_out["session_id"]) == expected and weight == len(expected)
        assert (held_out["weight"] == 1.0).all()
    assert every.counts["sessions_valid"] == len(valid) and every.counts["simulated_sessions_valid"] == (~valid["is_real"]).sum()
    assert every.counts["simulated_sessions_unused"] == paired.counts["simulated_sessions_unused"] - (len(valid) - 6)
    assert set(every.ids()["valid"]["simulated"]) == set(valid.loc[~valid["is_real"], "session_id"])


# --- training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_backbone_dir(tmp_path_factory, tiny_model_builder):
    """A decoder that is not the simulator's base: wider, deeper, with a smaller vocabulary."""
    return tiny_model_builder(tmp_path_factory.mktemp("other_backbone") / "model", seed=5, vocab_size=700,
                                hidden_size=48, num_hidden_layers=3)


def test_a_backbone_of_its_own_trains_scores_and_reloads_from_its_manifest(tiny_model_dir, other_backbone_dir, tmp_path):
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(14)
    params = tiny_params(backbone=str(other_backbone_dir))
    result = train_discriminator(params, real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "d", progress=False)
    assert result.metrics["overall"]["accuracy"] == 1.0  # the separable task, read by the other decoder

    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert manifest["base_model"] == other_backbone_dir.as_posix()
    assert manifest["simulator_base_model"] == tiny_model_dir.as_posix()
    assert manifest["base_model_sha256"] == sha256_dir(other_backbone_dir)
    # Reloaded on the backbone its manifest names, even when given the simulator's base (as the pairs stage does).
    model, tokenizer, _ = load_discriminator(tmp_path / "d", tiny_model_dir)
    assert model.config.hidden_size == 48 and model.config.num_hidden_layers == 3
    assert len(tokenizer) == len(load_tokenizer(other_backbone_dir)) != len(load_tokenizer(tiny_model_dir))
    valid_ids = set(result.selection.loc[result.selection["split"] == "valid", "session_id"])
    sessions = pd.concat([real_s, sim_s])
    rescored = score_sessions(model, tokenizer, sessions[sessions["session_id"].isin(valid_ids)], pd.concat([real_m, sim_m]),
                              contexts, manifest["view"], max_tokens=manifest["max_tokens"])
    np.testing.assert_allclose(rescored["logit"], result.valid_scores["logit"], atol=1e-5)

    # The structure baseline counts tokens with the simulator's tokenizer, whatever the backbone.
    same_base = train_discriminator(tiny_params(), real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "s",
                                    progress=False)
    assert result.summary["structure_baseline"] == same_base.summary["structure_baseline"]


@pytest.mark.parametrize("backbone", ["/no/such/checkpoint", "./missing", "org/name/extra", "a file"])
def test_a_backbone_that_is_neither_a_folder_nor_a_hub_id_is_a_clear_error(backbone, tiny_model_dir):
    if backbone == "a file":
        backbone = str(tiny_model_dir / "config.json")
    with pytest.raises(DialError, match="discriminator.backbone"):
        resolve_backbone(backbone, tiny_model_dir)


def test_an_empty_backbone_is_the_simulators_base_and_a_hub_id_passes_through(tiny_model_dir):
    assert resolve_backbone("", tiny_model_dir) == tiny_model_dir.as_posix()
    assert resolve_backbone(str(tiny_model_dir), Path("models/base")) == tiny_model_dir.as_posix()
    assert resolve_backbone("meta-llama/Llama-3.1-8B-Instruct", tiny_model_dir) == "meta-llama/Llama-3.1-8B-Instruct"


def test_training_learns_a_separable_task_and_is_deterministic(tiny_model_dir, tmp_path):
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(14)
    params = tiny_params()
    first = train_discriminator(params, real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "a", progress=False)
    assert first.summary["pairs_train"] == 10 and first.summary["pairs_valid"] == 4
    assert first.metrics["overall"]["accuracy"] == 1.0 and first.metrics["overall"]["mcc"] == 1.0
    assert first.metrics["overall"]["n"] == first.summary["labelled_positions_valid"]
    assert first.metrics["turn_25"] == {"accuracy": None, "f1": None, "mcc": None, "n": 0, "n_real": 0, "n_simulated": 0}
    assert first.summary["final_step_loss"] < first.summary["first_step_loss"]
    baseline = first.summary["structure_baseline"]
    assert (baseline["n"], baseline["train_n"]) == (8, 20)
    assert baseline["ci_low"] <= baseline["accuracy"] <= baseline["ci_high"]
    assert "user_messages_per_turn_max" in baseline["features"]

    out = tmp_path / "a"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "discriminator" and manifest["view"] == "user_only" and manifest["num_labels"] == 1
    selection = json.loads((out / SELECTION_FILE).read_text())
    assert len(selection["valid"]["real"]) == len(selection["valid"]["simulated"]) == 4
    weights = load_file(out / "adapter_model.safetensors")
    assert any("score" in key for key in weights) and any("lora_A" in key for key in weights)

    # Same seed → byte-identical adapter and identical scores; the saved model scores like the trained one.
    second = train_discriminator(params, real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "b", progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(first.valid_scores, second.valid_scores)
    model, tokenizer, _ = load_discriminator(out, tiny_model_dir)
    valid_ids = set(first.selection.loc[first.selection["split"] == "valid", "session_id"])
    sessions = pd.concat([real_s, sim_s])
    rescored = score_sessions(model, tokenizer, sessions[sessions["session_id"].isin(valid_ids)], pd.concat([real_m, sim_m]),
                              contexts, manifest["view"], max_tokens=manifest["max_tokens"])
    np.testing.assert_allclose(rescored["logit"], first.valid_scores["logit"], atol=1e-5)


# --- metrics ---------------------------------------------------------------------------------------


def test_binary_metrics_match_hand_computed_values():
    # y_true 1 1 1 0 0 ; y_pred 1 1 0 1 0 → TP=2 FN=1 FP=1 TN=1
    metrics = binary_metrics([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 0.666667
    assert metrics["mcc"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2), abs=1e-6)  # 1/6
    assert binary_metrics([1, 0], [0, 1])["mcc"] == -1.0
    assert binary_metrics([1, 1], [1, 0]) == {"accuracy": 0.5, "f1": pytest.approx(2 / 3, abs=1e-6), "mcc": 0.0, "n": 2, "n_real": 2, "n_simulated": 0}
    assert binary_metrics([0, 0], [0, 0])["f1"] == 0.0
    assert binary_metrics([], [])["accuracy"] is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 4)), min_size=1, max_size=30))
def test_weighted_metrics_equal_the_metrics_of_the_examples_repeated_weight_times(examples):
    y_true, y_pred, weights = (list(column) for column in zip(*examples))
    weighted = binary_metrics(y_true, y_pred, weights)
    repeated = binary_metrics(*zip(*[(t, p) for t, p, w in examples for _ in range(w)]))
    for key in ("accuracy", "f1", "mcc"):
        assert weighted[key] == pytest.approx(repeated[key], abs=1e-6)
    assert weighted["n"] == len(examples)  # counts are examples, not weights
    n_effective = weighted.get("n_effective", len(examples))
    assert n_effective == pytest.approx(sum(weights) ** 2 / sum(w * w for w in weights), abs=1e-3)


def test_weighted_metrics_match_sklearn_sample_weight():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    y_true, y_pred, weights = [1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0, 1], [3, 3, 2, 1, 1, 1, 1]
    metrics = binary_metrics(y_true, y_pred, weights)
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred, sample_weight=weights), abs=1e-6)
    assert metrics["f1"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, sample_weight=weights), abs=1e-6)
    assert metrics["mcc"] == pytest.approx(sklearn_metrics.matthews_corrcoef(y_true, y_pred, sample_weight=weights), abs=1e-6)
    with pytest.raises(ValueError, match="one positive weight"):
        binary_metrics([1, 0], [1, 0], [1, 0])


def test_discriminator_metrics_read_the_session_weight():
    real = pd.DataFrame({"user_turn_number": [1, 2], "logit": [1.0, -1.0], "weight": [3.0, 3.0]})
    sim = pd.DataFrame({"user_turn_number": [1, 1, 1], "logit": [-1.0, -1.0, 1.0], "weight": [1.0, 1.0, 1.0]})
    overall = discriminator_metrics(real, sim)["overall"]
    # real: 1 right, 1 wrong, weight 3 each; simulated: 2 right, 1 wrong → (3 + 2) / (6 + 3)
    assert overall["accuracy"] == pytest.approx(5 / 9, abs=1e-6) and overall["n"] == 5
    assert overall["n_effective"] == pytest.approx(81 / 21, abs=1e-3)


def test_discriminator_metrics_per_turn_and_overall():
    def frame(turns, logits):
        return pd.DataFrame({"user_turn_number": turns, "logit": logits})

    real = frame([1, 2, 5, 1], [0.3, -1.0, 2.0, 0.0])  # p=0.5 (logit 0) counts as "real"
    sim = frame([1, 5, 5, 3], [-0.2, 0.1, -3.0, np.nan])  # NaN = not scored: ignored
    metrics = discriminator_metrics(real, sim)
    # overall: real preds 1 0 1 1 (TP 3, FN 1); sim preds 0 1 0 (TN 2, FP 1)
    assert metrics["overall"]["n"] == 7 and metrics["overall"]["accuracy"] == pytest.approx(5 / 7, abs=1e-6)
    assert metrics["overall"]["f1"] == pytest.approx(6 / 8)
    assert metrics["overall"]["mcc"] == pytest.approx((3 * 2 - 1 * 1) / np.sqrt(4 * 4 * 3 * 3), abs=1e-6)
    assert metrics["turn_1"]["accuracy"] == 1.0 and metrics["turn_1"]["n"] == 3 and metrics["turn_1"]["mcc"] == 1.0
    assert metrics["turn_5"]["accuracy"] == pytest.approx(2 / 3, abs=1e-6) and metrics["turn_5"]["n_real"] == 1
    assert metrics["turn_10"]["n"] == 0 and metrics["turn_10"]["accuracy"] is None


def test_shallow_backbone_is_saved_and_restored(tiny_model_dir, tmp_path):
    """`n_layers` keeps the first decoder layers only; a saved shallow discriminator loads back
    with the same depth and gives the same logits."""
    params = DiscriminatorParams(n_layers=1, n_train=2, n_valid=0, seed=3)
    model = new_discriminator(tiny_model_dir, params)
    assert len(model.base_model.model.model.layers) == 1
    assert len(load_backbone(tiny_model_dir).model.layers) == 2
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(2)
    train_discriminator(params, real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "d", progress=False)
    loaded, tokenizer, manifest = load_discriminator(tmp_path / "d", tiny_model_dir)
    assert manifest["params"]["n_layers"] == 1
    assert len(loaded.base_model.model.model.layers) == 1
    scores = score_sessions(loaded, tokenizer, sim_s, sim_m, contexts, "user_only")
    again = score_sessions(load_discriminator(tmp_path / "d", tiny_model_dir)[0], tokenizer, sim_s, sim_m, contexts, "user_only")
    assert np.allclose(scores["logit"], again["logit"], equal_nan=True)


def test_a_loaded_discriminator_lives_on_the_device_asked_for_or_the_default_one(tiny_model_dir, tmp_path, monkeypatch):
    """Scoring (discriminator and pairs stages) runs where the model is: CUDA when present. On this
    CPU machine the meta device stands in for it; no parameter or buffer may stay behind."""
    import torch

    import dial.simulation.generation as generation

    params = DiscriminatorParams(n_layers=1, n_train=2, n_valid=0, seed=3, epochs=1)
    real_s, real_m, sim_s, sim_m, contexts = toy_corpus(2)
    train_discriminator(params, real_s, real_m, sim_s, sim_m, contexts, tiny_model_dir, tmp_path / "d", progress=False)

    def devices(model):
        return {tensor.device.type for tensor in [*model.parameters(), *model.buffers()]}

    assert devices(load_discriminator(tmp_path / "d", tiny_model_dir)[0]) == {"cpu"}
    assert devices(load_discriminator(tmp_path / "d", tiny_model_dir, device=torch.device("meta"))[0]) == {"meta"}
    monkeypatch.setattr(generation, "default_device", lambda: torch.device("meta"))  # as if CUDA were present
    assert devices(load_discriminator(tmp_path / "d", tiny_model_dir)[0]) == {"meta"}


def test_encoding_leaves_the_tokenizer_as_it_was(tiny_tokenizer):
    """Texts are tokenised with special tokens split, without leaking that setting into the shared
    tokenizer (transformers 5 keeps it set on the fast backend after a call)."""
    before = tiny_tokenizer("<|im_start|>hi", add_special_tokens=False)["input_ids"]
    SessionEncoder(tiny_tokenizer).encode(CONTEXT, TURNS, session_id="x")
    assert tiny_tokenizer("<|im_start|>hi", add_special_tokens=False)["input_ids"] == before
    assert tiny_tokenizer.backend_tokenizer.encode_special_tokens is False


def test_two_process_ddp_training_matches_one_process_at_the_same_global_batch(tiny_model_dir, tmp_path):
    """`accelerate launch` with 2 processes (DDP over gloo on this CPU), 1 session each per step,
    against one process with batches of 2: the same steps, losses and adapter; one writer."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    from safetensors.torch import load_file

    script = Path(__file__).with_name("ddp_discriminator_run.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "one"), "2"], check=True, env=env,
                   capture_output=True)
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         str(script), str(tiny_model_dir), str(tmp_path / "two"), "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["losses"]) == len(two["losses"]) > 2
    assert np.allclose([loss for _, loss in one["losses"]], [loss for _, loss in two["losses"]], atol=1e-5)
    weights = [load_file(str(tmp_path / name / "model" / "adapter_model.safetensors")) for name in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])
    assert one["metrics"]["overall"]["n"] == two["metrics"]["overall"]["n"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["model", "result.json"]  # one writer
