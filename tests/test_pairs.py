"""Preference pairs on the tiny offline model: the paper's filter on hand-computed cases, an
alternative's reward equals the reward it gets substituted into the whole session, shared-prefix
scoring equals full-sequence scoring, determinism, schema round trip, and no critical point →
empty outputs with a valid report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dial import io, schemas
from dial.discriminator import MANIFEST, SELECTION_FILE, DiscriminatorParams, SessionEncoder, new_discriminator, score_sessions
from dial.simulation.generation import ChatGenerator, load_chat_model
from dial.pairs import (
    CANDIDATE_COLUMNS,
    CANDIDATE_STATUSES,
    CHOSEN_NOT_POSITIVE,
    DROP_REASONS,
    DUPLICATE,
    EMPTY,
    KEPT,
    NO_LENGTH_MATCH,
    OVER_DISCRIMINATOR_BUDGET,
    OVER_MAX_TOKENS,
    PAIR_COLUMNS,
    PROMPT_OVER_MAX_TOKENS,
    REJECTED_NOT_NEGATIVE,
    REWARDS_TIED,
    SCORED,
    TOO_FEW_SCORED,
    TRUNCATED,
    CriticalPoint,
    PairsParams,
    build_pairs,
    build_points,
    candidate_text,
    make_pairs,
    run_pairs,
    sample_alternatives,
    score_alternatives,
    select_pair,
)
from dial.params import DecodingParams
from dial.prompting import simulator_messages
from dial.simulation.simulate import stable_seed

torch.set_num_threads(1)

MARKER = "<|endconversation|>"
SEP = "<|msg|>"
USER_LINES = ["hey so I feel tired today", "my job is a lot lately", "maybe a walk would help", "thanks, talk later",
              "I miss my family", "honestly I need some help"]
DISC_MANIFEST = {"kind": "discriminator", "view": "user_only", "max_tokens": 512, "max_user_turns": 0}


# --- toy data ------------------------------------------------------------------------------------


def toy_simulated(n_sessions: int = 3, n_user: int = 3, with_contexts: bool = True):
    """Simulated sessions grounded on real sessions r<i> (whose contexts are given), canonical frames."""
    sessions, messages, contexts = [], [], []
    for i in range(n_sessions):
        rid, sid = f"r{i:02d}", f"sim:toy:bot:r{i:02d}:0"
        sessions.append({"session_id": sid, "user_id": f"sim:toy:u{i}", "source": "simulated:toy", "session_index": 0,
                         "started_at": None, "chatbot_id": "bot", "topic": None,
                         "metadata": json.dumps({"real_session_id": rid, "chatbot_id": "bot", "simulator_id": "toy"})})
        contexts.append({"session_id": rid, "user_id": f"u{i}", "instruction": "be the user", "profile": "{}", "long_term": "",
                         "previous_summaries": "[]", "current_summary": "tired", "recent_history": "[]",
                         "context_text": f"You are user u{i}. They talk about day {i} and their job.", "n_tokens": 10,
                         "n_previous_summaries_dropped": 0, "n_history_messages_dropped": 0, "long_term_dropped": False})
        for t in range(n_user):
            messages += [{"session_id": sid, "turn_index": 2 * t, "role": "user", "text": USER_LINES[(i + t) % len(USER_LINES)],
                          "timestamp": None, "metadata": "{}"},
                         {"session_id": sid, "turn_index": 2 * t + 1, "role": "assistant", "text": f"I see, tell me more {t}",
                          "timestamp": None, "metadata": "{}"}]
    frames = (io.SESSIONS.validate(pd.DataFrame(sessions)), io.MESSAGES.validate(pd.DataFrame(messages)))
    contexts = pd.DataFrame(contexts)
    if not with_contexts:  # contexts of other sessions only: the simulated ones cannot be scored
        contexts["session_id"] = "other-" + contexts["session_id"]
    contexts = io.CONTEXTS.validate(contexts)
    return (*frames, contexts)


def tiny_params(**overrides) -> PairsParams:
    base = dict(n_alternatives=4, generate_batch_size=8, score_batch_size=3, max_tokens=4096, precision="fp32",
                decoding=DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=12))
    return PairsParams(**{**base, **overrides})


@pytest.fixture(scope="module")
def discriminator(tiny_model_dir, tiny_tokenizer):
    model = new_discriminator(tiny_model_dir, DiscriminatorParams(seed=3)).eval()
    return model, tiny_tokenizer, dict(DISC_MANIFEST)


@pytest.fixture(scope="module")
def simulator(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, None, "fp32")
    return ChatGenerator(model, tokenizer, batch_size=8)


def candidates_of(texts, statuses=None, rewards=None) -> pd.DataFrame:
    n = len(texts)
    return pd.DataFrame({
        "candidate_index": range(n),
        "text": texts,
        "status": statuses or [SCORED] * n,
        "reward": rewards if rewards is not None else [math.nan] * n,
    })


# --- the filter, by hand -------------------------------------------------------------------------


def test_select_pair_keeps_highest_positive_and_lowest_negative():
    choice = select_pair(candidates_of(["a", "b", "c", "d"], rewards=[0.5, -1.0, 2.0, -0.2]))
    assert choice == choice.__class__(KEPT, 2, 1, 2.0, -1.0)


def test_select_pair_ties_go_to_the_lower_index():
    choice = select_pair(candidates_of(["a", "b", "c", "d"], rewards=[1.0, -0.5, 1.0, -0.5]))
    assert (choice.outcome, choice.chosen_index, choice.rejected_index) == (KEPT, 0, 1)
    # All equal: chosen and rejected are still two different candidates, and the filter drops them.
    choice = select_pair(candidates_of(["a", "b", "c"], rewards=[0.0, 0.0, 0.0]))
    assert (choice.outcome, choice.chosen_index, choice.rejected_index) == (CHOSEN_NOT_POSITIVE, 0, 1)


def test_select_pair_drops_one_signed_sets():
    all_positive = select_pair(candidates_of(["a", "b", "c"], rewards=[0.3, 0.1, 0.2]))
    assert (all_positive.outcome, all_positive.rejected_index, all_positive.rejected_reward) == (REJECTED_NOT_NEGATIVE, 1, 0.1)
    all_negative = select_pair(candidates_of(["a", "b", "c"], rewards=[-0.3, -0.1, -0.2]))
    assert (all_negative.outcome, all_negative.chosen_index) == (CHOSEN_NOT_POSITIVE, 1)
    zero_rejected = select_pair(candidates_of(["a", "b"], rewards=[0.4, 0.0]))
    assert zero_rejected.outcome == REJECTED_NOT_NEGATIVE


def test_select_pair_without_the_sign_filter_keeps_any_ordered_pair():
    all_negative = select_pair(candidates_of(["a", "b", "c"], rewards=[-0.3, -0.1, -0.2]), require_opposite_signs=False)
    assert (all_negative.outcome, all_negative.chosen_index, all_negative.rejected_index) == (KEPT, 1, 0)
    all_positive = select_pair(candidates_of(["a", "b"], rewards=[0.3, 0.1]), require_opposite_signs=False)
    assert (all_positive.outcome, all_positive.chosen_index, all_positive.rejected_index) == (KEPT, 0, 1)
    tied = select_pair(candidates_of(["a", "b", "c"], rewards=[0.2, 0.2, 0.2]), require_opposite_signs=False)
    assert (tied.outcome, tied.chosen_index, tied.rejected_index) == (REWARDS_TIED, 0, 1)


def test_select_pair_needs_two_distinct_scored_texts():
    statuses = [SCORED, EMPTY, OVER_DISCRIMINATOR_BUDGET, OVER_DISCRIMINATOR_BUDGET]
    one_scored = candidates_of(["a", "", MARKER, "d"], statuses, [1.0, math.nan, math.nan, math.nan])
    assert select_pair(one_scored).outcome == TOO_FEW_SCORED
    assert select_pair(candidates_of([], [], [])).outcome == TOO_FEW_SCORED
    # The same text twice is one candidate, not a pair with itself.
    assert select_pair(candidates_of(["same", "same"], rewards=[1.0, -1.0])).outcome == TOO_FEW_SCORED
    # Duplicates and unscored rows never become chosen/rejected even with extreme rewards.
    choice = select_pair(candidates_of(["a", "b", "a", "c"], [SCORED, SCORED, DUPLICATE, OVER_DISCRIMINATOR_BUDGET],
                                       [0.5, -0.5, 9.0, -9.0]))
    assert (choice.outcome, choice.chosen_index, choice.rejected_index) == (KEPT, 0, 1)


def test_candidate_text_is_the_whole_turn_as_the_simulation_reads_it():
    assert candidate_text(" fine ", MARKER) == ("fine", None)
    assert candidate_text(f"hey {SEP} {SEP} you there?", MARKER) == (f"hey{SEP}you there?", None)  # a burst
    assert candidate_text(f"  {MARKER}", MARKER) == (MARKER, None)  # ending is an action, scored
    assert candidate_text(f"ok bye {MARKER} extra", MARKER) == (f"ok bye{SEP}{MARKER}", None)
    assert candidate_text("   ", MARKER) == ("", EMPTY)


def test_a_critical_message_inside_a_burst_makes_the_whole_turn_the_point():
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    sid = sessions["session_id"].iloc[0]
    burst = messages.copy()
    burst.loc[burst["turn_index"] == 3, "role"] = "user"  # user messages 2, 3, 4 form one turn
    critical = pd.DataFrame({"session_id": [sid, sid], "turn_index": [3, 4], "user_turn_number": [3, 4],
                             "reward": [0.5, -0.5], "kind": ["highest", "lowest"], "rank": [1, 1]})
    (point,) = build_points(critical, sessions, burst, contexts)
    assert (point.turn_index, point.user_turn_number, point.kind) == (2, 2, "highest")
    assert point.history == tuple(zip(burst["role"][:2], burst["text"][:2]))


def test_statuses_match_the_schema():
    assert CANDIDATE_STATUSES == schemas.CANDIDATE_STATUSES


# --- scoring in the identical history ------------------------------------------------------------


def point_of(sessions, messages, contexts, session_index: int, turn_index: int, kind="highest") -> CriticalPoint:
    sid = sessions["session_id"].iloc[session_index]
    rid = json.loads(sessions["metadata"].iloc[session_index])["real_session_id"]
    turns = messages[messages["session_id"] == sid].sort_values("turn_index")
    return CriticalPoint(
        session_id=sid, turn_index=turn_index, user_turn_number=turn_index // 2 + 1, kind=kind, reward=0.0,
        context_text=contexts.set_index("session_id").loc[rid, "context_text"],
        history=tuple(zip(turns["role"][:turn_index], turns["text"][:turn_index])),
    )


@pytest.mark.parametrize("turn_index", [0, 2, 4])
def test_alternative_reward_equals_the_reward_substituted_into_the_session(discriminator, turn_index):
    model, tokenizer, manifest = discriminator
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    point = point_of(sessions, messages, contexts, 0, turn_index)
    texts = ["I guess my boss is fine", "no", "what is going on with my sister?", "hmm. thanks"]
    candidates = pd.DataFrame([
        {"session_id": point.session_id, "turn_index": turn_index, "user_turn_number": point.user_turn_number,
         "kind": "highest", "candidate_index": j, "text": text, "status": SCORED, "logit": math.nan,
         "logit_prev": math.nan, "reward": math.nan, "seed": j, "n_tokens": 3} for j, text in enumerate(texts)
    ])
    encoder = SessionEncoder(tokenizer, manifest["view"], manifest["max_tokens"])
    shared = score_alternatives(model, tokenizer, encoder, [point], candidates, batch_size=3, share_prefix=True)
    full = score_alternatives(model, tokenizer, encoder, [point], candidates, batch_size=3, share_prefix=False)
    assert (shared["status"] == SCORED).all()
    assert shared["logit_prev"].nunique() == 1  # one prefix pass: the very same value for every alternative
    np.testing.assert_allclose(shared["reward"], full["reward"], rtol=0, atol=1e-5)
    # The same alternatives put into the whole session (later turns kept) and scored as a session.
    rewards = []
    for text in texts:
        substituted = messages.copy()
        substituted.loc[substituted["turn_index"] == turn_index, "text"] = text
        scores = score_sessions(model, tokenizer, sessions, substituted, contexts, manifest["view"], manifest["max_tokens"],
                                precision="fp32")
        row = scores.index[scores["turn_index"] == turn_index][0]
        previous = scores.at[row, "logit_0"] if turn_index == 0 else scores.at[row - 1, "logit"]
        rewards.append(scores.at[row, "logit"] - previous)
        np.testing.assert_allclose(shared["logit_prev"], previous, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shared["reward"], rewards, rtol=0, atol=1e-5)
    assert shared["reward"].abs().max() > 1e-4  # the texts do move the discriminator


def test_a_burst_is_scored_as_consecutive_user_messages_and_a_bare_end_as_the_session_as_it_is(discriminator):
    model, tokenizer, manifest = discriminator
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    point = point_of(sessions, messages, contexts, 0, 2)
    texts = [f"I miss my family{SEP}honestly I need some help", MARKER, f"ok bye{SEP}{MARKER}", "ok bye"]
    candidates = pd.DataFrame([
        {"session_id": point.session_id, "turn_index": 2, "user_turn_number": 2, "kind": "highest", "candidate_index": j,
         "text": text, "status": SCORED, "logit": math.nan, "logit_prev": math.nan, "reward": math.nan, "seed": j,
         "n_tokens": 3} for j, text in enumerate(texts)
    ])
    encoder = SessionEncoder(tokenizer, manifest["view"], manifest["max_tokens"])
    scored = score_alternatives(model, tokenizer, encoder, [point], candidates, batch_size=3, share_prefix=True)
    assert (scored["status"] == SCORED).all()
    np.testing.assert_allclose(scored["logit_prev"], scored["logit_prev"].iloc[0], rtol=0, atol=1e-5)
    # The burst, written into the session as two user messages, scored as a session.
    history = list(point.history) + [("user", "I miss my family"), ("user", "honestly I need some help")]
    as_session = pd.DataFrame([{"session_id": point.session_id, "turn_index": t, "role": role, "text": text,
                                "timestamp": None, "metadata": "{}"} for t, (role, text) in enumerate(history)])
    scores = score_sessions(model, tokenizer, sessions, as_session, contexts, manifest["view"], manifest["max_tokens"],
                            precision="fp32")
    expected = scores["logit"].iloc[-1] - scores["logit"].iloc[0]  # after the burst - before it (user message 1)
    np.testing.assert_allclose(scored["reward"].iloc[0], expected, rtol=0, atol=1e-5)
    assert scored["reward"].iloc[1] == 0.0  # the bare end adds no message: p does not move
    np.testing.assert_allclose(scored["reward"].iloc[2], scored["reward"].iloc[3], rtol=0, atol=1e-5)  # the end is unseen


def test_alternatives_over_the_discriminator_budget_are_not_scored(discriminator):
    model, tokenizer, manifest = discriminator
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    point = point_of(sessions, messages, contexts, 0, 2)
    texts = ["fine", "word " * 600, "fine", ""]
    candidates = pd.DataFrame([
        {"session_id": point.session_id, "turn_index": 2, "user_turn_number": 2, "kind": "lowest", "candidate_index": j,
         "text": text, "status": [SCORED, SCORED, DUPLICATE, EMPTY][j], "logit": math.nan, "logit_prev": math.nan,
         "reward": math.nan, "seed": j, "n_tokens": 1} for j, text in enumerate(texts)
    ])
    encoder = SessionEncoder(tokenizer, manifest["view"], manifest["max_tokens"])
    scored = score_alternatives(model, tokenizer, encoder, [point], candidates)
    assert list(scored["status"]) == [SCORED, OVER_DISCRIMINATOR_BUDGET, DUPLICATE, EMPTY]
    assert scored["reward"].iloc[2] == scored["reward"].iloc[0]  # a duplicate carries its twin's values
    assert scored[["logit", "logit_prev", "reward"]].iloc[[1, 3]].isna().all().all()


# --- sampling, the whole step --------------------------------------------------------------------


def test_alternatives_are_seeded_per_point_and_share_one_prefill(discriminator, simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=2)
    points = [point_of(sessions, messages, contexts, i, 2) for i in range(2)]
    params = tiny_params()
    before = simulator.tokens_prefilled
    candidates, prompt_tokens = sample_alternatives(simulator, points, params, MARKER, progress=False)
    # 2 points x 4 alternatives in one batch of 8: each point's prompt was run once.
    assert simulator.tokens_prefilled - before == sum(prompt_tokens)
    expected_prompt = simulator.prompt_ids([simulator_messages(points[0].context_text, points[0].history)])[0]
    assert prompt_tokens[0] == len(expected_prompt)
    assert list(candidates["seed"]) == [stable_seed(0, p.session_id, p.turn_index, j) for p in points for j in range(4)]
    again, _ = sample_alternatives(simulator, points, params, MARKER, progress=False)
    pd.testing.assert_frame_equal(candidates, again)
    other_seed, _ = sample_alternatives(simulator, points, tiny_params(seed=1), MARKER, progress=False)
    assert list(other_seed["text"]) != list(candidates["text"])


def test_alternatives_cut_at_the_token_budget_are_truncated_and_never_paired(simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=2)
    points = [point_of(sessions, messages, contexts, i, 2) for i in range(2)]
    generous, _ = sample_alternatives(simulator, points, tiny_params(), MARKER, progress=False)
    cut, prompt_tokens = sample_alternatives(
        simulator, points, tiny_params(decoding=DecodingParams(temperature=1.0, top_p=0.95, max_new_tokens=2)),
        MARKER, progress=False,
    )
    # Same seeds: the 2-token budget cuts whatever the 12-token one let run past 2 tokens.
    ran_long = (generous["n_tokens"] > 2).to_numpy()
    assert ran_long.any()
    assert (cut.loc[ran_long, "status"] == TRUNCATED).all()
    assert set(cut.loc[~ran_long, "status"]) <= {SCORED, DUPLICATE, EMPTY}
    # A point whose alternatives were all cut has nothing to pair, whatever their rewards would be.
    for point in points:
        rows = cut[(cut["session_id"] == point.session_id) & (cut["turn_index"] == point.turn_index)].copy()
        rows["reward"] = np.linspace(-1.0, 1.0, len(rows))
        if (rows["status"] == TRUNCATED).all():
            assert select_pair(rows).outcome == TOO_FEW_SCORED


def test_prompts_over_max_tokens_are_not_sampled(simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    point = point_of(sessions, messages, contexts, 0, 4)
    before = simulator.tokens_prefilled
    candidates, prompt_tokens = sample_alternatives(simulator, [point], tiny_params(max_tokens=20), MARKER, progress=False)
    assert prompt_tokens[0] >= 20 and simulator.tokens_prefilled == before
    assert (candidates["status"] == PROMPT_OVER_MAX_TOKENS).all() and (candidates["n_tokens"] == 0).all()
    _, outcomes = build_pairs([point], candidates, prompt_tokens, simulator.tokenizer, 20)
    assert outcomes == [OVER_MAX_TOKENS]


def test_make_pairs_is_deterministic_and_consistent(discriminator, simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=3)
    params = tiny_params()
    first = make_pairs(params, sessions, messages, contexts, discriminator, lambda: simulator, MARKER, progress=False)
    second = make_pairs(params, sessions, messages, contexts, discriminator, lambda: simulator, MARKER, progress=False)
    pd.testing.assert_frame_equal(first.candidates, second.candidates)
    pd.testing.assert_frame_equal(first.pairs, second.pairs)
    assert first.report == second.report

    report = first.report
    # One highest + one lowest point per session (3 scored user messages each), 4 candidates each.
    assert report["critical_points"] == {"total": 6, "highest": 3, "lowest": 3}
    assert report["candidates"] == 24 == sum(report["candidates_by_status"].values())
    assert report["kept_pairs"] + sum(report["dropped"].values()) == 6
    assert report["kept_pairs"] == len(first.pairs) == report["points_with_kept_pair"]
    assert report["scored_candidates"] == int((first.candidates["status"] == SCORED).sum())
    # The points are the extreme messages of the session scores.
    for point in first.points:
        session = first.scores[first.scores["session_id"] == point.session_id]
        assert point.turn_index in set(session["turn_index"])
    # Every kept pair is made of its point's best and worst scored candidates.
    context_of = dict(zip(contexts["session_id"], contexts["context_text"]))
    for pair in first.pairs.itertuples(index=False):
        at = (first.candidates["session_id"] == pair.session_id) & (first.candidates["turn_index"] == pair.turn_index)
        group = first.candidates[at]
        scored = group[group["status"] == SCORED]
        assert pair.chosen_reward == scored["reward"].max() > 0 > scored["reward"].min() == pair.rejected_reward
        assert json.loads(pair.prompt)[0] == {"role": "system", "content": context_of[pair.session_id.split(":")[3]]}


def save_discriminator(model, tokenizer, folder, base_model_dir):
    from dial.training.common import save_adapter

    folder.mkdir(parents=True)
    save_adapter(model, tokenizer, folder)
    (folder / MANIFEST).write_text(json.dumps({**DISC_MANIFEST, "base_model": str(base_model_dir)}))
    empty = {"real": [], "simulated": []}
    (folder / SELECTION_FILE).write_text(json.dumps({"train": empty, "valid": empty}))
    return folder


def write_simulated(folder, sessions, messages):
    io.SESSIONS.write(sessions, folder / "sessions.parquet")
    io.MESSAGES.write(messages, folder / "messages.parquet")


def write_stage_inputs(discriminator, tiny_model_dir, tmp_path):
    """The pairs stage's inputs on disk (2 simulated sessions, contexts, D_S); returns D_S's folder."""
    model, tokenizer, _ = discriminator
    sessions, messages, contexts = toy_simulated(n_sessions=2)
    write_simulated(tmp_path / "sim", sessions, messages)
    io.CONTEXTS.write(contexts, tmp_path / "contexts.parquet")
    return save_discriminator(model, tokenizer, tmp_path / "disc", tiny_model_dir)


def test_run_pairs_writes_artifacts_that_read_back(discriminator, tiny_model_dir, tmp_path):
    disc_dir = write_stage_inputs(discriminator, tiny_model_dir, tmp_path)
    params = tiny_params()
    report = run_pairs(params, MARKER, tmp_path / "sim", tmp_path / "contexts.parquet", disc_dir, tiny_model_dir, None,
                       tmp_path / "out", tmp_path / "report.json", progress=False)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    artifact, candidates = io.read_any(tmp_path / "out" / "candidates.parquet")
    assert artifact is io.PAIR_CANDIDATES and list(candidates.columns) == CANDIDATE_COLUMNS
    assert len(candidates) == report["candidates"] == 4 * report["critical_points"]["total"]
    artifact, pairs = io.read_any(tmp_path / "out" / "pairs.parquet")
    assert artifact is io.PREFERENCE_PAIRS and list(pairs.columns) == PAIR_COLUMNS
    assert len(pairs) == report["kept_pairs"]
    # A second run gives byte-identical files.
    first = [(tmp_path / "out" / name).read_bytes() for name in ("candidates.parquet", "pairs.parquet")]
    run_pairs(params, MARKER, tmp_path / "sim", tmp_path / "contexts.parquet", disc_dir, tiny_model_dir, None,
              tmp_path / "out", tmp_path / "report.json", progress=False)
    assert first == [(tmp_path / "out" / name).read_bytes() for name in ("candidates.parquet", "pairs.parquet")]


def test_preference_pairs_round_trip_and_token_cap(tiny_tokenizer, tmp_path):
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    points = [point_of(sessions, messages, contexts, 0, 2, "highest"), point_of(sessions, messages, contexts, 0, 4, "lowest")]
    rows = []
    for point in points:
        for j, (text, reward) in enumerate([("I miss my family", 0.7), ("ok", -0.4), ("bye now", 0.1)]):
            rows.append({"session_id": point.session_id, "turn_index": point.turn_index,
                         "user_turn_number": point.user_turn_number, "kind": point.kind, "candidate_index": j, "text": text, "status": SCORED, "logit": reward,
                         "logit_prev": 0.0, "reward": reward, "seed": j, "n_tokens": 4})
    candidates = pd.DataFrame(rows)
    rendered = tiny_tokenizer.apply_chat_template([p.prompt() for p in points], add_generation_prompt=True)["input_ids"]
    prompt_tokens = [len(ids) for ids in rendered]
    pairs, outcomes = build_pairs(points, candidates, prompt_tokens, tiny_tokenizer, 4096)
    assert outcomes == [KEPT, KEPT]
    assert list(pairs["pair_id"]) == [p.pair_id for p in points]
    assert list(pairs["chosen"]) == ["I miss my family"] * 2 and list(pairs["rejected"]) == ["ok"] * 2
    assert list(pairs["prompt_tokens"]) == prompt_tokens
    # Completion tokens as the template renders them after the prompt: text + <|im_end|> + newline.
    assert pairs["rejected_tokens"].iloc[0] == len(tiny_tokenizer("ok<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert json.loads(pairs["prompt"].iloc[0]) == points[0].prompt()
    io.PREFERENCE_PAIRS.write(pairs, tmp_path / "pairs.parquet")
    io.PAIR_CANDIDATES.write(candidates, tmp_path / "candidates.parquet")
    pd.testing.assert_frame_equal(io.PREFERENCE_PAIRS.read(tmp_path / "pairs.parquet"), pairs, check_dtype=False)
    pd.testing.assert_frame_equal(io.PAIR_CANDIDATES.read(tmp_path / "candidates.parquet"), candidates, check_dtype=False)
    # The cap: the first point's prompt + its longer completion exceeds it, the second's does not.
    cap = prompt_tokens[0] + int(pairs["chosen_tokens"].iloc[0]) - 1
    assert prompt_tokens[1] > cap  # the later point has the longer history
    capped, outcomes = build_pairs(points, candidates, prompt_tokens, tiny_tokenizer, cap)
    assert outcomes == [OVER_MAX_TOKENS, OVER_MAX_TOKENS] and capped.empty
    capped, outcomes = build_pairs(points, candidates, prompt_tokens, tiny_tokenizer, cap + 1)
    assert outcomes == [KEPT, OVER_MAX_TOKENS] and list(capped["pair_id"]) == [points[0].pair_id]


def test_the_end_marker_survives_into_the_pair_and_the_dpo_sample(tiny_tokenizer):
    from dial.training.dpo import preference_dataset

    sessions, messages, contexts = toy_simulated(n_sessions=1)
    point = point_of(sessions, messages, contexts, 0, 4, "lowest")
    ending, burst = MARKER, f"so{SEP}what now"
    candidates = pd.DataFrame([
        {"session_id": point.session_id, "turn_index": 4, "user_turn_number": 3, "kind": "lowest", "candidate_index": j,
         "text": text, "status": SCORED, "logit": reward, "logit_prev": 0.0, "reward": reward, "seed": j, "n_tokens": 4}
        for j, (text, reward) in enumerate([(burst, -0.6), (ending, 0.0), ("fine", -0.2)])
    ])
    prompt_tokens = [len(tiny_tokenizer.apply_chat_template([point.prompt()], add_generation_prompt=True)["input_ids"][0])]
    pairs, outcomes = build_pairs([point], candidates, prompt_tokens, tiny_tokenizer, 4096, require_opposite_signs=False)
    assert outcomes == [KEPT]
    assert (pairs["chosen"].iloc[0], pairs["rejected"].iloc[0]) == (ending, burst)
    sample = preference_dataset(pairs)[0]
    assert sample["chosen"] == [{"role": "assistant", "content": ending}]
    assert sample["rejected"] == [{"role": "assistant", "content": burst}]


def test_no_critical_point_gives_empty_outputs_and_a_valid_report(discriminator, tiny_model_dir, tmp_path):
    model, tokenizer, _ = discriminator
    sessions, messages, contexts = toy_simulated(n_sessions=2, with_contexts=False)  # nothing can be scored

    def no_simulator():
        raise AssertionError("the simulator must not be loaded without critical points")

    result = make_pairs(tiny_params(), sessions, messages, contexts, discriminator, no_simulator, MARKER, progress=False)
    assert result.candidates.empty and result.pairs.empty and result.points == []
    assert result.report["critical_points"]["total"] == 0 and result.report["kept_share"] == 0.0
    assert result.report["user_messages_by_status"] == {"no_context": 6}
    assert result.report["rewards"]["kept_chosen"]["n"] == 0
    io.PAIR_CANDIDATES.write(result.candidates, tmp_path / "candidates.parquet")
    io.PREFERENCE_PAIRS.write(result.pairs, tmp_path / "pairs.parquet")
    assert io.PAIR_CANDIDATES.read(tmp_path / "candidates.parquet").empty
    assert io.PREFERENCE_PAIRS.read(tmp_path / "pairs.parquet").empty
    json.dumps(result.report)  # JSON-serialisable as is


def test_real_sessions_are_refused(discriminator):
    sessions, messages, contexts = toy_simulated(n_sessions=1)
    sessions = sessions.assign(source="chitchat")
    with pytest.raises(Exception, match="include real ones"):
        make_pairs(tiny_params(), sessions, messages, contexts, discriminator, lambda: None, MARKER, progress=False)


def test_max_sessions_samples_a_seeded_subset(discriminator, simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=3)
    params = tiny_params().model_copy(update={"max_sessions": 2})
    result = make_pairs(params, sessions, messages, contexts, discriminator, lambda: simulator, MARKER, progress=False)
    assert result.report["sessions_with_critical_points"] == 3
    assert result.report["sessions_sampled_for_alternatives"] == 2
    assert result.report["critical_points"]["total"] == 4  # highest + lowest in each of the 2 sessions
    again = make_pairs(params, sessions, messages, contexts, discriminator, lambda: simulator, MARKER, progress=False)
    assert {p.session_id for p in result.points} == {p.session_id for p in again.points}


def test_sessions_the_discriminator_trained_on_get_no_critical_point(discriminator, simulator):
    sessions, messages, contexts = toy_simulated(n_sessions=3)
    trained_on = ["sim:toy:bot:r01:0"]
    result = make_pairs(tiny_params(), sessions, messages, contexts, discriminator, lambda: simulator, MARKER,
                        progress=False, discriminator_train_sessions=trained_on)
    assert {p.session_id for p in result.points} == {"sim:toy:bot:r00:0", "sim:toy:bot:r02:0"}
    block = result.report["discriminator_train_sessions"]
    assert block["sessions"] == 1 and block["excluded"] is True
    assert block["mean_abs_reward_trained_on"] is not None and block["mean_abs_reward_held_out"] is not None
    kept_all = make_pairs(tiny_params(exclude_discriminator_train=False), sessions, messages, contexts, discriminator,
                          lambda: simulator, MARKER, progress=False, discriminator_train_sessions=trained_on)
    assert {p.session_id for p in kept_all.points} == {s for s in sessions["session_id"]}


def test_run_pairs_samples_alternatives_on_a_served_simulator(discriminator, tiny_model_dir, tmp_path):
    from serve_helpers import ServeProcess

    from dial.params import SimulatorParams, SimulatorServerParams

    disc_dir = write_stage_inputs(discriminator, tiny_model_dir, tmp_path)
    server = ServeProcess(tiny_model_dir, tmp_path / "serve.log", "--model-name", "base", "--strict-model-name")
    try:
        settings = SimulatorParams(backend="openai", server=SimulatorServerParams(base_url=server.url, max_retries=0))
        report = run_pairs(tiny_params(), MARKER, tmp_path / "sim", tmp_path / "contexts.parquet", disc_dir, tiny_model_dir, None,
                           tmp_path / "out", tmp_path / "report.json", progress=False, simulator_settings=settings)
        requests = server.health()["stats"]["requests"]
    finally:
        server.stop()
    # Each alternative is its own request with its own seed, on the zero-shot simulator's served name.
    assert report["candidates"] == 4 * report["critical_points"]["total"] > 0
    assert requests == report["candidates"]
    assert len(io.PAIR_CANDIDATES.read(tmp_path / "out" / "candidates.parquet")) == report["candidates"]


def test_a_length_matched_rejected_is_the_lowest_reward_within_the_ratio():
    texts = ["one two three four five six", "no", "one two three four", "a b c d e f g h i j k l", "x y z w v"]
    rewards = [2.0, -3.0, -1.0, -2.5, 0.5]
    # Without the ratio the rejected is the one-word text (-3.0): a length contrast.
    assert select_pair(candidates_of(texts, rewards=rewards)).rejected_index == 1
    # Within 1.5x of the chosen 6 words (4..9 words): "one two three four" (-1.0) and "x y z w v" (0.5).
    choice = select_pair(candidates_of(texts, rewards=rewards), max_length_ratio=1.5)
    assert (choice.outcome, choice.chosen_index, choice.rejected_index, choice.rejected_reward) == (KEPT, 0, 2, -1.0)
    # Within 1.1x (6..6 words) no other candidate: dropped with its own reason.
    assert select_pair(candidates_of(texts, rewards=rewards), max_length_ratio=1.1).outcome == NO_LENGTH_MATCH
    assert NO_LENGTH_MATCH in DROP_REASONS


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.floats(-5, 5, allow_nan=False)), min_size=2, max_size=8),
       st.floats(1.0, 4.0))
def test_a_length_matched_pair_is_always_within_the_ratio(candidates, ratio):
    texts = [" ".join(["word"] * n) + f" {'z' * (i + 1)}" for i, (n, _) in enumerate(candidates)]  # distinct, n + 1 words
    choice = select_pair(candidates_of(texts, rewards=[r for _, r in candidates]), require_opposite_signs=False, max_length_ratio=ratio)
    if choice.outcome in (KEPT, REWARDS_TIED):
        chosen, rejected = candidates[choice.chosen_index][0] + 1, candidates[choice.rejected_index][0] + 1
        assert rejected <= chosen * ratio and chosen <= rejected * ratio
        assert choice.chosen_reward >= choice.rejected_reward


def test_a_length_ratio_below_one_is_refused():
    from pydantic import ValidationError

    from dial.params import PairsParams

    with pytest.raises(ValidationError, match="max_length_ratio"):
        PairsParams(max_length_ratio=0.5)
    assert PairsParams(max_length_ratio=1.5).max_length_ratio == 1.5
