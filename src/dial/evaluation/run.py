"""The `evaluate` stage: real held-out sessions and every simulator's sessions, judged by one
judge, measured by `dial.evaluation.evaluate` and written as reports (METHOD.md §6–7).

Which real sessions: those that ground at least one simulation (held-out test-split users), so
real and simulated sessions share contexts. The judge sees real and simulated sessions mixed, each
under an opaque id (`judge_inputs`): it cannot tell which simulator, if any, wrote a session.

Like for like: real held-out sessions run far longer than simulated ones, so every session, real
or simulated, is cut after the same number of user turns (`compared_user_turns`, `cut_sessions`)
before the judge, the metrics or the t-SNE picture read it. Only the termination probe reads real
sessions whole: it asks where they end, and draws them from every held-out (test-split) session
with a context, not only the grounding ones (`held_out_real_sessions`). The held-out perplexity of the real user messages under
each simulator (`dial.evaluation.perplexity`, sharing the probe's loaded model) scores each
session's first `evaluate.perplexity.max_user_turns` user messages, by default the same cut.

Inputs beside the sessions: the discriminator reports (`reports/discriminator/<simulator>.json`:
accuracies, the structure-only baseline) and the simulate reports (`reports/simulate/<simulator>.json`:
the share of messages cut at the token cap), both optional per simulator.

Outputs: `data/evaluation/` (the judge's issues and user actions, the goal states, the termination probes: Parquet,
for audits and `dial query`) and under `reports/`: `metrics.json` (flat keys for
`dvc metrics diff`), `report.md` with `figures/*.png`, `plots/*.csv` for `dvc plots`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dial import io, paths
from dial.errors import DialError
from dial.evaluation import realism
from dial.evaluation import structure as session_structure
from dial.evaluation.evaluate import REAL, cut_sessions, evaluate, termination_decoding
from dial.evaluation.perplexity import held_out_perplexity
from dial.evaluation.report import write_reports
from dial.evaluation.goals import build_goal_tracker, group_goal_states
from dial.evaluation.judges import build_judge, judge_inputs
from dial.evaluation.taxonomy import load_taxonomy
from dial.params import Params

log = logging.getLogger(__name__)

ISSUES_FILE = "issues.parquet"
USER_ACTIONS_FILE = "user_actions.parquet"
TERMINATION_FILE = "termination.parquet"
GOAL_STATES_FILE = "goal_states.parquet"


def load_simulated(simulator_ids: Sequence[str]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    simulated = {}
    for simulator in simulator_ids:
        directory = paths.simulated_dir(simulator)
        simulated[simulator] = (
            io.SESSIONS.read(paths.sessions_file(directory)),
            io.MESSAGES.read(paths.messages_file(directory)),
            io.SIMULATIONS.read(directory / "simulations.parquet"),
        )
    return simulated


def grounding_real_sessions(simulated: dict, real_sessions: pd.DataFrame, real_messages: pd.DataFrame):
    """The real sessions that ground at least one simulation, and their messages."""
    grounding = set()
    for _, _, simulations in simulated.values():
        grounding |= set(simulations["real_session_id"].astype(str))
    missing = grounding - set(real_sessions["session_id"].astype(str))
    if missing:
        raise DialError(f"evaluate: simulations are grounded on unknown real sessions {sorted(missing)[:5]}")
    sessions = real_sessions[real_sessions["session_id"].astype(str).isin(grounding)].reset_index(drop=True)
    messages = real_messages[real_messages["session_id"].astype(str).isin(grounding)].reset_index(drop=True)
    return sessions, messages


def held_out_real_sessions(real_sessions: pd.DataFrame, real_messages: pd.DataFrame, splits: pd.DataFrame, contexts: pd.DataFrame):
    """Every real session of a test-split user that has a context, and its messages: the termination
    probe's pool. Any held-out session is a fair probe, grounding a simulation or not, and the
    grounding ones alone hold too few real endings at the default size (10 sessions, 0 predicted)."""
    test_users = set(splits.loc[splits["split"] == "test", "user_id"].astype(str))
    with_context = set(contexts["session_id"].astype(str))
    chosen = real_sessions["user_id"].astype(str).isin(test_users) & real_sessions["session_id"].astype(str).isin(with_context)
    sessions = real_sessions[chosen].reset_index(drop=True)
    messages = real_messages[real_messages["session_id"].astype(str).isin(set(sessions["session_id"].astype(str)))]
    return sessions, messages.reset_index(drop=True)


def load_simulator(params: Params, simulator: str):
    """The simulator as it simulates (`dial.simulation.generation.ChatGenerator`: base model, its adapter
    merged, `simulate.precision`), loaded once for the termination probe and the perplexity."""
    from dial.simulation.generation import ChatGenerator

    adapter = paths.simulator_adapter_dir(simulator)
    return ChatGenerator.load(paths.BASE_MODEL_DIR, adapter, params.simulate.precision, params.simulate.batch_size)


def termination_probe(params: Params, generator, simulator: str, real_sessions, real_messages, contexts, progress: bool) -> pd.DataFrame:
    """Dialogue-termination predictions of one simulator on held-out real sessions (UserLM)."""
    probe = params.evaluate.termination
    chosen = realism.select_sessions(real_sessions["session_id"].astype(str).tolist(), probe.n_sessions, probe.seed)
    return realism.termination_predictions(
        generator,
        contexts,
        real_sessions[real_sessions["session_id"].astype(str).isin(chosen)],
        real_messages,
        params.sft_samples.end_marker,
        termination_decoding(params.simulate.decoding, probe),
        probe.seed,
        simulator_id=simulator,
        progress=progress,
        max_positions_per_session=probe.max_positions_per_session,
        message_separator=params.sft_samples.message_separator,
    )


def real_user_perplexity(
    params: Params, generator, real_sessions, real_messages, contexts, user_turns: int, progress: bool
) -> dict:
    """The simulator's held-out perplexity of the real user messages (`dial.evaluation.perplexity`),
    on each session's first `evaluate.perplexity.max_user_turns` user messages (0 = `user_turns`,
    the cut of the other metrics)."""
    scoring = params.evaluate.perplexity
    return held_out_perplexity(
        generator.model,
        generator.tokenizer,
        real_sessions,
        real_messages,
        contexts,
        max_sessions=scoring.max_sessions,
        max_user_turns=scoring.max_user_turns or user_turns,
        max_tokens=scoring.max_tokens,
        batch_size=scoring.batch_size,
        seed=scoring.seed,
        n_resamples=params.evaluate.bootstrap_samples,
        bootstrap_seed=params.evaluate.seed,
        message_separator=params.sft_samples.message_separator,
        progress=progress,
    )


def embedding_comparison(params: Params, real_messages: pd.DataFrame, simulated: dict) -> tuple[str, bytes | None, dict]:
    """Real vs simulated sessions in embedding space (dial.evaluation.embeddings): (status, the
    t-SNE picture's PNG or None, each simulator's classifier two-sample test against the real
    sessions). Both read the same sessions, cut like every other metric: at most
    `evaluate.tsne.max_sessions_per_group` of each group (a seeded choice)."""
    from dial.evaluation import embeddings

    model_dir = embeddings.embedding_model_dir(paths.EMBEDDING_MODEL_CACHE)
    if model_dir is None:
        status = f"skipped: no offline embedding model installed ({embeddings.INSTALL_HINT})"
        log.warning("evaluate: t-SNE picture and embedding two-sample test %s", status)
        return status, None, {}
    started = time.perf_counter()
    tsne_params = params.evaluate.tsne
    groups = {REAL: real_messages, **{name: messages for name, (_, messages, _) in simulated.items()}}
    texts, labels = [], []
    for name, messages in groups.items():
        users = messages[messages["role"] == "user"].sort_values(["session_id", "turn_index"])
        by_session = users.groupby("session_id")["text"].agg(lambda parts: "\n".join(parts))
        for session_id in embeddings.sample_sessions(by_session.index, tsne_params.max_sessions_per_group, params.seed):
            texts.append(by_session[session_id])
            labels.append(name)
    vectors = embeddings.embed_texts(model_dir, texts)
    layout = embeddings.tsne_layout(vectors, tsne_params.perplexity, seed=params.seed)
    group_of = np.asarray(labels)
    two_sample_tests = {}
    for name in simulated:
        test = embeddings.classifier_two_sample_test(
            vectors[group_of == REAL], vectors[group_of == name],
            seed=params.evaluate.seed, n_resamples=params.evaluate.bootstrap_samples, name=name,
            n_permutations=tsne_params.permutations,
        )
        if test is not None:
            two_sample_tests[name] = test
    log.info("evaluate: embeddings, t-SNE and two-sample tests of %d sessions in %.1f s", len(texts), time.perf_counter() - started)
    return f"on: {len(texts)} sessions", embeddings.tsne_figure(layout, labels, list(groups)), two_sample_tests


def compared_user_turns(params: Params) -> int:
    """The user turns at which real and simulated sessions are cut: evaluate.max_user_turns, 0 =
    simulate.max_turns (no simulated session is longer)."""
    user_turns = params.evaluate.max_user_turns or params.simulate.max_turns
    if user_turns > params.simulate.max_turns:
        raise DialError(
            f"evaluate.max_user_turns={user_turns} exceeds simulate.max_turns={params.simulate.max_turns}: real sessions "
            "would be compared past the last simulated turn; set it to 0 (= simulate.max_turns) or less"
        )
    return user_turns


def _read_report(report_file: Path) -> dict | None:
    return json.loads(Path(report_file).read_text(encoding="utf-8")) if Path(report_file).exists() else None


def run_evaluate(params: Params, simulator_ids: Sequence[str], data_dir: Path, reports_dir: Path, progress: bool = True) -> dict:
    """Judge, measure and report every simulator against the real held-out sessions."""
    simulated = load_simulated(simulator_ids)
    contexts = io.CONTEXTS.read(paths.CONTEXTS_FILE)
    all_real_sessions = io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR))
    all_real_messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
    real_sessions, whole_real_messages = grounding_real_sessions(simulated, all_real_sessions, all_real_messages)
    user_turns = compared_user_turns(params)
    real_messages = cut_sessions(whole_real_messages, user_turns)
    # A simulated session whose user ended it past the cut did not end within the compared turns.
    simulated_within_cut = {
        name: session_structure.real_ended(messages, user_turns) for name, (_, messages, _) in simulated.items()
    }
    simulated = {
        name: (sessions, cut_sessions(messages, user_turns), simulations)
        for name, (sessions, messages, simulations) in simulated.items()
    }
    log.info(
        "evaluate: every session cut after %d user turns (real messages: %d of %d kept)",
        user_turns, len(real_messages), len(whole_real_messages),
    )

    taxonomy = load_taxonomy(params.judge.taxonomy)
    all_messages = pd.concat([real_messages, *(messages for _, messages, _ in simulated.values())], ignore_index=True)
    items, item_sessions = judge_inputs(all_messages, salt=params.judge.id_salt)
    log.info("evaluate: judge %s on %d sessions (real and simulated, mixed, opaque ids)", params.judge.backend, len(items))
    with build_judge(params.judge, taxonomy) as judge:
        issues, user_actions = judge.annotate(items, progress=progress)
    io.ISSUES.write(issues, Path(data_dir) / ISSUES_FILE)
    io.USER_ACTIONS.write(user_actions, Path(data_dir) / USER_ACTIONS_FILE)

    # User goal-state tracking (UGST, dial.evaluation.goals) by the judge's backend, on the same cut
    # sessions: each against the goal of the real session that grounds it (a real one: its own).
    tracker = build_goal_tracker(params.judge)
    goal_states = {
        name: group_goal_states(sessions, messages, simulations, contexts, tracker)
        for name, (sessions, messages, simulations) in {REAL: (real_sessions, real_messages, None), **simulated}.items()
    }
    log.info("evaluate: goal states tracked by %s", tracker.name)
    io.GOAL_STATES.write(
        pd.concat([frame.assign(group=name, tracker=tracker.name) for name, frame in goal_states.items()], ignore_index=True),
        Path(data_dir) / GOAL_STATES_FILE,
    )


    termination, perplexity = {}, {}
    if params.evaluate.termination.enabled:
        probe_sessions, probe_messages = held_out_real_sessions(
            all_real_sessions, all_real_messages, io.SPLITS.read(paths.SPLITS_FILE), contexts
        )
    if params.evaluate.termination.enabled or params.evaluate.perplexity.enabled:
        for simulator in simulator_ids:
            generator = load_simulator(params, simulator)
            if params.evaluate.termination.enabled:
                # Where real users end their sessions: whole held-out sessions, not the cut ones.
                termination[simulator] = termination_probe(
                    params, generator, simulator, probe_sessions, probe_messages, contexts, progress
                )
            if params.evaluate.perplexity.enabled:
                # Whole sessions too: the perplexity applies its own cap of user messages.
                perplexity[simulator] = real_user_perplexity(
                    params, generator, real_sessions, whole_real_messages, contexts, user_turns, progress
                )
            del generator  # one simulator in memory at a time
    if termination:
        io.TERMINATION_PREDICTIONS.write(pd.concat(termination.values(), ignore_index=True), Path(data_dir) / TERMINATION_FILE)

    discriminator_reports = {simulator: _read_report(paths.discriminator_report(simulator)) for simulator in simulator_ids}
    discriminator_scores = {
        simulator: pd.read_csv(paths.discriminator_scores_file(simulator), dtype={"session_id": str})
        for simulator in simulator_ids
        if paths.discriminator_scores_file(simulator).exists()
    }
    simulate_reports = {simulator: _read_report(paths.simulate_report(simulator)) for simulator in simulator_ids}
    # A simulated session (as its discriminator saw it) has at most this many user messages.
    simulated_user_turns = params.simulate.max_turns
    if params.discriminator.max_user_turns:
        simulated_user_turns = min(simulated_user_turns, params.discriminator.max_user_turns)

    # Session shape, like for like: the cut sessions, and whether the user ended each one in them.
    real_ended = session_structure.real_ended(whole_real_messages, user_turns)
    structure = {REAL: session_structure.per_session(real_messages, real_ended, real_sessions["session_id"])}
    for name, (sessions, messages, simulations) in simulated.items():
        structure[name] = session_structure.per_session(
            messages, session_structure.simulated_ended(simulations), sessions["session_id"]
        )
    # Who ended a session within the compared turns, for the ended-mid-task simulator error: a real
    # user read on the whole session; a simulated one wrote the end marker and was not cut.
    user_ended = {REAL: real_ended}
    for name, (_, _, simulations) in simulated.items():
        within_cut = simulated_within_cut[name]
        user_ended[name] = {
            session_id: ended and within_cut.get(session_id, True)  # no message at all: ended at once
            for session_id, ended in session_structure.simulated_ended(simulations).items()
        }

    metrics = evaluate(
        real_sessions,
        real_messages,
        simulated,
        contexts,
        issues=issues,
        user_actions=user_actions,
        item_sessions=item_sessions,
        discriminator_reports=discriminator_reports,
        discriminator_scores=discriminator_scores,
        termination=termination or None,
        perplexity=perplexity or None,
        params=params.evaluate,
        issue_categories=[category.name for category in taxonomy.categories],
        action_groups={action.name: action.group for action in taxonomy.actions},
        simulate_reports=simulate_reports,
        simulated_user_turns=simulated_user_turns,
        user_turns=user_turns,
        structure=structure,
        user_ended=user_ended,
        goal_states=goal_states,
        goal_tracker=tracker.name,
    )
    extra_figures = {}
    if params.evaluate.tsne.enabled:
        status, png, two_sample_tests = embedding_comparison(params, real_messages, simulated)
        metrics["settings"]["tsne"] = status
        for simulator, test in two_sample_tests.items():
            metrics["groups"][simulator]["embeddings"] = test
        if png is not None:
            extra_figures["tsne"] = png
    loss_files = {"sft": paths.SFT_LOSS}
    loss_files.update({simulator: paths.dpo_loss_file(simulator) for simulator in simulator_ids if simulator.startswith("it")})
    write_reports(metrics, reports_dir, loss_files={name: path for name, path in loss_files.items() if Path(path).exists()},
                  extra_figures=extra_figures)
    log.info("evaluate: wrote %s/metrics.json and %s/report.md", reports_dir, reports_dir)
    return metrics
