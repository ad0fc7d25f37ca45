"""The evaluation end to end on small synthetic frames: `evaluate` gathers the right numbers, and
`write_reports` writes every file, deterministically (metrics.json and PNG bytes identical across
two runs), with "—" wherever an input is missing."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dial import io
from dial.errors import DialError
from dial.evaluation import report, stats
from dial.evaluation.evaluate import AbPair, EvaluateParams, evaluate, termination_decoding
from dial.evaluation.report import write_reports
from dial.params import DecodingParams
from eval_helpers import messages_frame

WORDS = "i feel sad today my job is hard and the boss never listens so tired of it all maybe tomorrow better".split()
CHATBOTS = ("supportive", "terse", "replay")


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _session(session_id, user_id, index, source, chatbot_id):
    return {"session_id": session_id, "user_id": user_id, "source": source, "session_index": index,
            "started_at": None, "chatbot_id": chatbot_id, "topic": None, "metadata": "{}"}


def _messages(rng, session_id, n_user, end_with_chatbot=True):
    rows = []
    for i in range(n_user):
        rows.append((session_id, "user", _text(rng, rng.randint(3, 9))))
        if i < n_user - 1 or end_with_chatbot:
            rows.append((session_id, "assistant", _text(rng, rng.randint(3, 9))))
    return rows


_frame = messages_frame


def synthetic(seed: int = 0, simulators=("zero-shot", "sft", "it1")):
    """Real sessions (talking to three chatbots), simulated sessions per simulator and chatbot, the
    judges' output and discriminator reports."""
    rng = random.Random(seed)
    real_ids = [f"r{i}" for i in range(6)]
    real_sessions = pd.DataFrame([_session(sid, f"u{i}", 0, "chitchat", CHATBOTS[i % 3]) for i, sid in enumerate(real_ids)])
    real_messages = _frame([row for sid in real_ids for row in _messages(rng, sid, rng.randint(2, 5))])
    contexts = pd.DataFrame({
        "session_id": real_ids,
        "current_summary": [f"Conversation prompt (shown to both speakers): {_text(rng, 3)}\nthe user talks about {_text(rng, 4)}"
                            for _ in real_ids],
        "long_term": ["" for _ in real_ids],
        "previous_summaries": [json.dumps([f"earlier: {_text(rng, 4)}"]) for _ in real_ids],
        "context_text": [f"context of {sid}" for sid in real_ids],
    })
    simulated = {}
    for name in simulators:
        sessions, rows, simulations = [], [], []
        for real_id in real_ids:
            for chatbot in CHATBOTS:
                sid = f"sim:{name}:{chatbot}:{real_id}:0"
                sessions.append(_session(sid, f"sim:{name}:{real_id}", CHATBOTS.index(chatbot), f"simulated:{name}", chatbot))
                rows += _messages(rng, sid, rng.randint(1, 4))
                simulations.append({"session_id": sid, "real_session_id": real_id, "chatbot_id": chatbot})
        simulated[name] = (pd.DataFrame(sessions), _frame(rows), pd.DataFrame(simulations))

    # Judges: every session judged; issues more frequent with "terse".
    item_sessions, issues, actions = {}, [], []
    all_messages = pd.concat([real_messages] + [m for _, m, _ in simulated.values()])
    chatbot_of = dict(zip(real_sessions["session_id"], real_sessions["chatbot_id"]))
    for s, _, _ in simulated.values():
        chatbot_of.update(zip(s["session_id"], s["chatbot_id"]))
    for number, (sid, group) in enumerate(all_messages.groupby("session_id", sort=True)):
        item = f"item{number:03d}"
        item_sessions[item] = sid
        for turn, role in zip(group["turn_index"], group["role"]):
            if role == "assistant" and rng.random() < (0.5 if chatbot_of[sid] == "terse" else 0.2):
                issues.append((item, turn, "User Frustration", rng.choice(["ignores user", "too short", "repeats"]), "q", "test"))
            if role == "user" and rng.random() < 0.4:
                actions.append((item, turn, rng.choice(["Good", "Bad"]), "", "test"))
    issues = pd.DataFrame(issues, columns=["item_id", "turn_index", "group", "category", "evidence", "judge"])
    actions = pd.DataFrame(actions, columns=["item_id", "turn_index", "group", "action", "judge"])
    actions["action"] = actions["group"].map({"Good": "agrees", "Bad": "disagrees"})
    reports = {
        name: {"simulator": name, "metrics": {
            "overall": {"accuracy": 0.9 - 0.1 * k, "f1": 0.8, "mcc": 0.6, "n": 40},
            "turn_1": {"accuracy": 0.6, "f1": 0.5, "mcc": 0.2, "n": 10},
            "turn_25": {"accuracy": None, "f1": None, "mcc": None, "n": 0},
        }}
        for k, name in enumerate(simulators)
    }
    return dict(real_sessions=real_sessions, real_messages=real_messages, simulated=simulated, contexts=contexts,
                issues=issues, user_actions=actions, item_sessions=item_sessions, discriminator_reports=reports)


def test_synthetic_frames_are_canonical():
    data = synthetic()
    io.SESSIONS.validate(data["real_sessions"])
    io.MESSAGES.validate(data["real_messages"])
    for sessions, messages, _ in data["simulated"].values():
        io.SESSIONS.validate(sessions)
        io.MESSAGES.validate(messages)


def test_evaluate_counts_issues_per_chatbot_message_and_correlates_across_chatbots():
    data = synthetic()
    metrics = evaluate(**data)
    assert metrics["order"] == ["real", "zero-shot", "sft", "it1"]
    real = metrics["groups"]["real"]
    # Denominator = chatbot messages of the judged real sessions; numerator = flagged messages.
    assert real["issues"]["n"] == (data["real_messages"]["role"] == "assistant").sum()
    item_of = {v: k for k, v in data["item_sessions"].items()}
    real_items = {item_of[s] for s in data["real_sessions"]["session_id"]}
    flagged = data["issues"][data["issues"]["item_id"].isin(real_items)].drop_duplicates(["item_id", "turn_index"])
    assert real["issues"]["k"] == len(flagged)
    assert real["issues"]["rate"] == pytest.approx(len(flagged) / real["issues"]["n"])
    assert real["discriminator"] is None and real["issues"]["kl_from_real"] is None
    sft = metrics["groups"]["sft"]
    assert sft["discriminator"]["overall"]["accuracy"] == pytest.approx(0.8)
    assert sft["issues"]["kl_from_real"] >= 0.0
    assert sft["predictive_validity"]["applicable"] is True
    assert sft["predictive_validity"]["n_configurations"] == 3
    ab = sft["ab"]["supportive_vs_terse"]
    assert ab["simulation"]["applicable"] and ab["real"]["applicable"]
    assert ab["directions_agree"] == ((ab["simulation"]["difference"] > 0) == (ab["real"]["difference"] > 0))
    assert set(sft["actions"]["bce"]["groups"]) == {"Good", "Bad"}
    assert metrics["judge"]["n_judged_sessions_outside_groups"] == 0


def test_predictive_validity_and_real_ab_need_real_chatbot_ids():
    data = synthetic()
    data["real_sessions"] = data["real_sessions"].assign(chatbot_id=None)
    metrics = evaluate(**data)
    validity = metrics["groups"]["sft"]["predictive_validity"]
    assert validity["applicable"] is False and ">= 3" in validity["why"]
    ab = metrics["groups"]["sft"]["ab"]["supportive_vs_terse"]
    assert ab["simulation"]["applicable"] and not ab["real"]["applicable"] and ab["directions_agree"] is None


def test_findings_on_the_wrong_role_are_counted_not_used():
    data = synthetic()
    issues = data["issues"]
    first_real_item = min(k for k, v in data["item_sessions"].items() if v == "r0")
    extra = pd.DataFrame([(first_real_item, 0, "User Distress", "on a user message", "q", "test")], columns=issues.columns)
    data["issues"] = pd.concat([issues, extra], ignore_index=True)
    before = evaluate(**synthetic())["groups"]["real"]["issues"]
    after = evaluate(**data)["groups"]["real"]["issues"]
    assert after["n_not_on_chatbot_message"] == before["n_not_on_chatbot_message"] + 1
    assert after["k"] == before["k"] and "on a user message" not in after["categories"]


def test_bad_judge_input_is_an_error_naming_it():
    data = synthetic()
    data["issues"] = data["issues"].assign(item_id="nope")
    with pytest.raises(DialError, match="nope"):
        evaluate(**data)
    data = synthetic()
    data["issues"].loc[0, "judge"] = "other"
    with pytest.raises(DialError, match="mixes judges"):
        evaluate(**data)


def test_write_reports_is_complete_flat_and_deterministic(tmp_path):
    data = synthetic()
    params = EvaluateParams(ab_pairs=[AbPair(control="supportive", treatment="terse"), AbPair(control="terse", treatment="gone")])
    loss = tmp_path / "loss.csv"
    loss.write_text("step,loss\n5,3.0\n10,2.5\n15,2.2\n", encoding="utf-8")
    runs = []
    for run in ("a", "b"):
        out = tmp_path / run
        written = write_reports(evaluate(**data, params=params), out, loss_files={"sft": loss})
        assert all(path.exists() for path in written)
        runs.append({path.relative_to(out).as_posix(): path.read_bytes() for path in written})
    assert runs[0] == runs[1]  # every byte, PNGs included
    names = set(runs[0])
    assert {"metrics.json", "report.md", "plots/discriminator.csv", "plots/lexical.csv", "plots/issue_rates.csv",
            "plots/issue_category_deltas.csv", "plots/user_actions.csv"} <= names
    assert {f"figures/{n}.png" for n in ("lexical", "discriminator", "issue_rates", "issue_category_deltas",
                                         "user_actions", "losses")} <= names
    assert all(runs[0][n].startswith(b"\x89PNG") for n in names if n.endswith(".png"))
    assert b"matplotlib" not in runs[0]["figures/lexical.png"]  # no version stamp in the PNG

    flat = json.loads(runs[0]["metrics.json"])
    assert all(not isinstance(v, (dict, list, str)) for v in flat.values())
    assert list(flat) == sorted(flat)
    assert flat["sft.discriminator.overall.accuracy"] == 0.8
    assert "real.lexical.word_entropy_mean" in flat and "it1.issues.rate" in flat
    assert "sft.discriminator.turn_25.accuracy" not in flat  # None is not a metric

    markdown = runs[0]["report.md"].decode()
    for heading in ("Did DIAL make", "table 1", "table 2", "table 3", "table 4", "table 5", "termination"):
        assert heading in markdown
    assert "| real |" in markdown and "| it1 |" in markdown
    assert "—" in markdown  # real has no discriminator, turn 25 has no data, no termination run
    assert "no judged simulated chatbot messages for gone" in markdown
    assert "figures/issue_rates.png" in markdown
    discriminator_csv = runs[0]["plots/discriminator.csv"].decode().splitlines()
    assert discriminator_csv[0].startswith("simulator,step,accuracy_turn_1")
    assert discriminator_csv[1].startswith("zero-shot,0,0.600000")


def test_report_without_judges_or_discriminators_shows_dashes(tmp_path):
    data = synthetic(simulators=("sft",))
    metrics = evaluate(data["real_sessions"], data["real_messages"], data["simulated"], data["contexts"])
    written = write_reports(metrics, tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert "figures/lexical.png" in names and "figures/issue_rates.png" not in names
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Only the baseline simulator (sft)" in markdown
    assert "issue_rates.png" not in markdown
    flat = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert not any(key.startswith("sft.issues") for key in flat)
    assert "sft.lexical.type_token_ratio_mean" in flat


def test_params_defaults_and_termination_decoding():
    params = EvaluateParams()
    assert params.ab_pairs == [AbPair(control="supportive", treatment="terse")] and params.kl_smoothing == 1.0
    simulate = DecodingParams(temperature=0.8, top_p=0.95, max_new_tokens=40)
    decoding = termination_decoding(simulate, params.termination)
    assert (decoding.temperature, decoding.top_p, decoding.max_new_tokens) == (0.8, 0.95, 12)
    with pytest.raises(ValueError):
        EvaluateParams(kl_smoothing=-1)


def test_flat_metrics_rounds_and_skips_non_numbers():
    metrics = {"order": ["real"], "groups": {"real": {"a": 1 / 3, "b": None, "c": "why", "d": {"e": True, "f": 2}, "g": -1e-12}},
               "judge": {"n_items": 3}, "settings": {"decimals": 4}}
    assert report.flat_metrics(metrics) == {"judge.n_items": 3, "real.a": 0.3333, "real.d.e": True, "real.d.f": 2, "real.g": 0.0}


def _with_discriminators(data, accuracies: dict, n: int):
    for name, accuracy in accuracies.items():
        data["discriminator_reports"][name]["metrics"]["overall"] = {"accuracy": accuracy, "f1": 0.8, "mcc": 0.6, "n": n}
    return data


def test_verdict_says_not_significant_when_the_interval_of_the_difference_includes_zero():
    metrics = evaluate(**synthetic())
    sentence, header, rows = report.verdict(metrics)
    assert header == ["metric", "n", "sft", "it1"]
    accuracy_row = rows[0]
    assert accuracy_row[1] == "messages: sft 40, it1 40"
    assert accuracy_row[2] == "0.300" and accuracy_row[3].startswith("0.200 (Δ -0.100 [")  # |0.8 − 0.5| → |0.7 − 0.5|
    assert accuracy_row[3].endswith("not significant")
    comparison = metrics["groups"]["it1"]["vs_baseline"]["discriminator_accuracy"]
    assert comparison["difference_ci_low"] < 0 < comparison["difference_ci_high"] and comparison["significant"] is False
    assert sentence.startswith("it1 vs sft: closer to real on 0, further on 0")
    assert all("✓" not in cell and "✗" not in cell for row in rows for cell in row)


def test_verdict_marks_a_difference_whose_interval_excludes_zero():
    data = _with_discriminators(synthetic(), {"zero-shot": 0.95, "sft": 0.9, "it1": 0.6}, n=4000)
    metrics = evaluate(**data)
    comparison = metrics["groups"]["it1"]["vs_baseline"]["discriminator_accuracy"]
    assert comparison["difference"] == pytest.approx(-0.3)
    assert comparison["difference_ci_high"] < 0 and comparison["significant"] and comparison["improved"]
    sentence, _, rows = report.verdict(metrics)
    assert rows[0][3].endswith("✓")
    assert sentence.startswith("it1 vs sft: closer to real on 1,")
    worse = evaluate(**_with_discriminators(synthetic(), {"zero-shot": 0.95, "sft": 0.6, "it1": 0.9}, n=4000))
    assert report.verdict(worse)[2][0][3].endswith("✗")


def test_report_opens_with_the_power_sentence_when_the_run_is_too_small():
    small = report.render_markdown(evaluate(**synthetic()), {})
    opening = small.split("\n\n")[1]
    assert opening.startswith("This run is too small to say whether DIAL made the simulator more real")
    assert "with 40 held-out user messages" in opening and "388 messages" in opening
    assert "closer to real on" not in small  # no verdict sentence
    large = report.render_markdown(evaluate(**_with_discriminators(synthetic(), {"zero-shot": 0.9, "sft": 0.8, "it1": 0.7}, 400)), {})
    assert "too small" not in large and "it1 vs sft: closer to real on" in large


def test_discriminator_turns_past_the_simulated_length_are_not_simulated():
    markdown = report.render_markdown(evaluate(**synthetic(), simulated_user_turns=3), {})
    sft_row = next(line for line in markdown.splitlines() if line.startswith("| sft | 60.0 ["))
    cells = [cell.strip() for cell in sft_row.strip("|").split("|")]
    # turn 1 (acc, F1, MCC), turn 5, turn 10, turn 25, overall
    assert cells[4:13] == ["not simulated"] * 9 and cells[1].startswith("60.0 [31.3, 83.2]")
    real_row = next(line for line in markdown.splitlines() if line.startswith("| real | — |"))
    assert "not simulated" not in real_row
    without_limit = report.render_markdown(evaluate(**synthetic()), {})
    assert "not simulated" not in without_limit


def test_intervals_sit_beside_each_metric_and_follow_the_seed(tmp_path):
    data = synthetic()
    flat = report.flat_metrics(evaluate(**data))
    for key in ("real.lexical.word_entropy_mean", "it1.issues.rate", "it1.issues.kl_from_real", "it1.intent_decomposition.value",
                "it1.actions.bce.total", "it1.discriminator.overall.accuracy", "sft.issues.per_chatbot.terse.rate"):
        assert flat[f"{key}_ci_low"] <= flat[key] + 1e-9 or key.endswith("kl_from_real")  # KL's bootstrap is biased upward
        assert flat[f"{key}_ci_low"] < flat[f"{key}_ci_high"]
    low, high = report.flat_metrics(evaluate(**data))["it1.discriminator.overall.accuracy_ci_low"], flat["it1.discriminator.overall.accuracy_ci_high"]
    reference = scipy_stats.binomtest(28, 40).proportion_ci(method="wilson")
    assert (low, high) == (pytest.approx(reference.low, abs=1e-6), pytest.approx(reference.high, abs=1e-6))
    assert "real.first_turn_diversity.value_ci_low" not in flat  # no interval for a share of distinct words
    other_seed = report.flat_metrics(evaluate(**data, params=EvaluateParams(seed=1)))
    assert other_seed["it1.issues.rate"] == flat["it1.issues.rate"]
    assert other_seed["it1.issues.rate_ci_low"] != flat["it1.issues.rate_ci_low"] or other_seed["it1.issues.rate_ci_high"] != flat["it1.issues.rate_ci_high"]


def test_structure_baseline_is_carried_into_metrics_and_explained_when_above_chance():
    data = synthetic()
    data["discriminator_reports"]["sft"]["structure_baseline"] = {"accuracy": 0.7, "ci_low": 0.62, "ci_high": 0.77, "n": 40}
    data["discriminator_reports"]["it1"]["structure_baseline"] = {"accuracy": 0.55, "ci_low": 0.4, "ci_high": 0.69, "n": 40}
    metrics = evaluate(**data)
    flat = report.flat_metrics(metrics)
    assert flat["sft.discriminator.structure_baseline.accuracy"] == 0.7
    assert flat["sft.discriminator.structure_baseline.accuracy_ci_low"] == 0.62  # the report's interval, not recomputed
    assert flat["sft.discriminator.structure_baseline.n"] == 40
    markdown = report.render_markdown(metrics, {})
    assert "structure-only acc" in markdown and "70.0 [62.0, 77.0]" in markdown
    assert "the discriminator can win on structure" in markdown and "sft (70.0" in markdown and "it1 (55.0" not in markdown
    plain = report.render_markdown(evaluate(**synthetic()), {})
    assert "structure-only" not in plain and "win on structure" not in plain


def test_truncation_from_the_simulate_reports_is_shown_near_the_top():
    data = synthetic()
    share = {"truncated": 3, "messages": 40, "share": 0.075, "ci_low": 0.026, "ci_high": 0.199}
    reports = {"sft": {"sessions": 18, "truncation": {"user": share, "chatbots": {"terse": {**share, "truncated": 0, "share": 0.0, "ci_low": 0.0, "ci_high": 0.088}}}},
               "it1": {"sessions": 18}}  # an older report without the key
    metrics = evaluate(**data, simulate_reports=reports)
    flat = report.flat_metrics(metrics)
    assert flat["sft.truncation.user.share"] == 0.075 and flat["sft.truncation.user.share_ci_high"] == 0.199
    assert flat["sft.truncation.chatbots.terse.truncated"] == 0
    assert not any(key.startswith("it1.truncation") for key in flat)
    markdown = report.render_markdown(metrics, {})
    assert markdown.index("Messages cut at the token cap") < markdown.index("Did DIAL make")
    assert "| sft | user | 3 / 40 | 7.50% [2.60%, 19.90%] |" in markdown and "| sft | chatbot terse | 0 / 40 |" in markdown
    assert "token cap" not in report.render_markdown(evaluate(**synthetic()), {})


def held_out_perplexity(value: float, low: float, high: float) -> dict:
    return {"value": value, "value_ci_low": low, "value_ci_high": high, "mean_nll": 3.45, "n_turns": 120,
            "n_sessions": 12, "n_tokens": 2400, "n_messages_skipped": 0, "max_user_turns": 3, "precision": "bf16"}


def test_perplexity_table_opens_the_report_when_a_group_has_it():
    assert "perplexity" not in report.render_markdown(evaluate(**synthetic()), {}).lower()
    metrics = evaluate(**synthetic(), perplexity={"sft": held_out_perplexity(31.5, 29.0, 34.25)})
    flat = report.flat_metrics(metrics)
    assert flat["sft.perplexity.value"] == 31.5 and flat["sft.perplexity.value_ci_high"] == 34.25
    assert not any(key.startswith(("real.perplexity", "it1.perplexity")) for key in flat)
    markdown = report.render_markdown(metrics, {})
    assert markdown.index("Held-out perplexity") < markdown.index("Did DIAL make")
    assert "| sft | 31.50 [29.00, 34.25] | 120 | 2400 | 12 |  |" in markdown
    assert "| it1 | " not in markdown.split("## Did DIAL")[0] and "first 3 user turns" in markdown


def test_perplexity_of_the_real_group_or_an_unknown_simulator_is_refused():
    for name in ("real", "it9"):
        with pytest.raises(DialError, match="unknown group"):
            evaluate(**synthetic(), perplexity={name: held_out_perplexity(31.5, 29.0, 34.25)})


@pytest.mark.parametrize("it1_interval, flagged", [((34.5, 36.0), True), ((33.0, 36.0), False)])
def test_an_iteration_whose_perplexity_interval_lies_above_sfts_is_flagged(it1_interval, flagged):
    perplexities = {"sft": held_out_perplexity(31.5, 29.0, 34.25), "it1": held_out_perplexity(35.0, *it1_interval)}
    markdown = report.render_markdown(evaluate(**synthetic(), perplexity=perplexities), {})
    assert ("⚠ above sft |" in markdown.split("| it1 |")[1].split("\n")[0]) is flagged
    assert ("it1: real users became less predictable" in markdown) is flagged


def test_kl_default_smoothing_is_one_pseudo_count_in_total():
    metrics = evaluate(**synthetic())
    real_counts = metrics["groups"]["real"]["issues"]["category_counts"]
    sim_counts = metrics["groups"]["sft"]["issues"]["category_counts"]
    categories = sorted(set(real_counts) | {c for g in metrics["groups"].values() for c in g["issues"]["category_counts"]})
    k = len(categories)
    p = np.array([real_counts.get(c, 0) + 1 / k for c in categories])
    q = np.array([sim_counts.get(c, 0) + 1 / k for c in categories])
    assert metrics["groups"]["sft"]["issues"]["kl_from_real"] == pytest.approx(scipy_stats.entropy(p, q))
    assert metrics["groups"]["sft"]["issues"]["kl_unsmoothed"]["support"] == len(real_counts)


# --------------------------------------------------------------------------------------------
# The aggregate row: simulators pooled (paper table 3)
# --------------------------------------------------------------------------------------------


def _per_session_issue_counts(data, simulator):
    """(session ids sorted, flagged chatbot messages, chatbot messages) per session of a simulator,
    counted from the synthetic frames directly."""
    sessions, messages, _ = data["simulated"][simulator]
    session_of_item = data["item_sessions"]
    flagged = data["issues"].assign(session_id=data["issues"]["item_id"].map(session_of_item)).drop_duplicates(["session_id", "turn_index"])
    ids = sorted(sessions["session_id"])
    k = [int((flagged["session_id"] == sid).sum()) for sid in ids]
    n = [int(((messages["session_id"] == sid) & (messages["role"] == "assistant")).sum()) for sid in ids]
    return ids, np.array(k, dtype=float), np.array(n, dtype=float)


def test_aggregate_pools_sft_and_every_iteration_by_default():
    from dial.evaluation.evaluate import aggregate_simulators

    assert aggregate_simulators(["sft", "iterations"], ["zero-shot", "sft", "it1", "it2"]) == ["sft", "it1", "it2"]
    assert aggregate_simulators(["it2", "zero-shot"], ["zero-shot", "sft", "it1", "it2"]) == ["zero-shot", "it2"]  # report order
    assert aggregate_simulators(["sft", "iterations"], ["zero-shot", "sft"]) == ["sft"]
    metrics = evaluate(**synthetic())
    assert metrics["aggregate"]["simulators"] == ["sft", "it1"] and metrics["settings"]["aggregate"] == ["sft", "it1"]
    assert evaluate(**synthetic(simulators=("zero-shot", "sft")))["aggregate"] is None  # a pool of one is that simulator's row
    assert evaluate(**synthetic(), params=EvaluateParams(aggregate=[]))["aggregate"] is None
    with pytest.raises(ValueError, match="evaluate.aggregate"):
        EvaluateParams(aggregate=["sft", "it0"])


def test_the_pooled_issue_rate_is_the_chatbot_message_weighted_mean_of_the_pooled_simulators():
    metrics = evaluate(**synthetic())
    pooled = metrics["aggregate"]["issues"]
    sft, it1 = metrics["groups"]["sft"]["issues"], metrics["groups"]["it1"]["issues"]
    assert (pooled["k"], pooled["n"]) == (sft["k"] + it1["k"], sft["n"] + it1["n"])
    assert pooled["rate"] == pytest.approx((sft["n"] * sft["rate"] + it1["n"] * it1["rate"]) / (sft["n"] + it1["n"]))
    assert min(sft["rate"], it1["rate"]) <= pooled["rate"] <= max(sft["rate"], it1["rate"])
    assert metrics["aggregate"]["n_sessions"] == 36 and pooled["n_sessions_judged"] == sft["n_sessions_judged"] + it1["n_sessions_judged"]
    for chatbot in CHATBOTS:
        assert pooled["per_chatbot"][chatbot]["n"] == sft["per_chatbot"][chatbot]["n"] + it1["per_chatbot"][chatbot]["n"]
        assert pooled["per_chatbot"][chatbot]["k"] == sft["per_chatbot"][chatbot]["k"] + it1["per_chatbot"][chatbot]["k"]
    counts = {c: sft["category_counts"].get(c, 0) + it1["category_counts"].get(c, 0) for c in set(sft["category_counts"]) | set(it1["category_counts"])}
    assert pooled["category_counts"] == counts


def test_the_pooled_interval_is_a_bootstrap_over_the_pooled_sessions():
    data = synthetic()
    params = EvaluateParams(bootstrap_samples=400, seed=3)
    pooled = evaluate(**data, params=params)["aggregate"]["issues"]
    parts = [_per_session_issue_counts(data, name) for name in ("sft", "it1")]
    k = np.concatenate([part[1] for part in parts])
    n = np.concatenate([part[2] for part in parts])
    weights = stats.resample_weights(len(k), 400, stats.stable_rng(3, "aggregate"))
    expected = stats.percentile_interval(stats.ratio_replicates(weights, k, n))
    assert (pooled["rate_ci_low"], pooled["rate_ci_high"]) == pytest.approx(expected)
    # Narrower than either simulator's alone: twice the sessions.
    metrics = evaluate(**data, params=params)
    widths = {name: metrics["groups"][name]["issues"]["rate_ci_high"] - metrics["groups"][name]["issues"]["rate_ci_low"] for name in ("sft", "it1")}
    assert pooled["rate_ci_high"] - pooled["rate_ci_low"] < max(widths.values())


def test_pooled_kl_correlation_and_ab_are_computed_on_the_pooled_counts():
    metrics = evaluate(**synthetic())
    aggregate, real = metrics["aggregate"], metrics["groups"]["real"]["issues"]
    categories = sorted({c for g in metrics["groups"].values() for c in g["issues"]["category_counts"]})
    assert aggregate["issues"]["kl_from_real"] == pytest.approx(stats.kl_divergence(real["category_counts"], aggregate["issues"]["category_counts"], categories, 1.0))
    assert aggregate["issues"]["kl_from_real_ci_low"] < aggregate["issues"]["kl_from_real_ci_high"]
    sim_counts = {c: (v["k"], v["n"]) for c, v in aggregate["issues"]["per_chatbot"].items()}
    real_counts = {c: (v["k"], v["n"]) for c, v in real["per_chatbot"].items()}
    assert aggregate["predictive_validity"] == stats.predictive_validity(sim_counts, real_counts)
    assert aggregate["ab"]["supportive_vs_terse"] == stats.ab_test("supportive", "terse", sim_counts, real_counts)


def test_the_aggregate_row_is_in_metrics_json_and_in_the_issues_and_ab_tables(tmp_path):
    metrics = evaluate(**synthetic())
    write_reports(metrics, tmp_path)
    flat = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    for key in ("aggregate.issues.rate", "aggregate.issues.rate_ci_low", "aggregate.issues.rate_ci_high", "aggregate.issues.n",
                "aggregate.issues.kl_from_real", "aggregate.issues.kl_from_real_ci_low", "aggregate.predictive_validity.r",
                "aggregate.n_sessions", "aggregate.ab.supportive_vs_terse.simulation.z"):
        assert key in flat
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    issues = markdown.split("## Issues")[1].split("\n## ")[0]
    ab = markdown.split("## A/B replication")[1].split("\n## ")[0]
    rate = metrics["aggregate"]["issues"]
    assert f"| aggregate (sft + it1) | {100 * rate['rate']:.2f}% [{100 * rate['rate_ci_low']:.2f}%, {100 * rate['rate_ci_high']:.2f}%]" in issues
    assert "the sessions of sft, it1 pooled (36 sessions" in issues
    assert "| aggregate (sft + it1) | supportive → terse |" in ab


def test_a_simulator_named_aggregate_is_refused():
    data = synthetic(simulators=("sft",))
    data["simulated"] = {"aggregate": data["simulated"]["sft"]}
    data["discriminator_reports"] = {}
    with pytest.raises(DialError, match="reserved"):
        evaluate(**data)
