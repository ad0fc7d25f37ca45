"""The `evaluate` stage: real held-out sessions and every simulator's sessions, judged by one
judge, measured by `dial.evaluation.evaluate` and written as reports (METHOD.md §6–7).

Which real sessions: those that ground at least one simulation (held-out test-split users), so
real and simulated sessions share contexts. The judge sees real and simulated sessions mixed, each
under an opaque id (`judge_inputs`): it cannot tell which simulator, if any, wrote a session.

Outputs: `data/evaluation/` (the judge's issues and user actions, the termination probes: Parquet,
for audits and `dial query`) and under `reports/`: `metrics.json` (flat keys for
`dvc metrics diff`), `report.md` with `figures/*.png`, `plots/*.csv` for `dvc plots`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from dial import io, paths
from dial.errors import DialError
from dial.evaluation import realism
from dial.evaluation.evaluate import evaluate, termination_decoding
from dial.evaluation.report import write_reports
from dial.evaluation.judges import build_judge, judge_inputs
from dial.evaluation.taxonomy import load_taxonomy
from dial.params import Params

log = logging.getLogger(__name__)

ISSUES_FILE = "issues.parquet"
USER_ACTIONS_FILE = "user_actions.parquet"
TERMINATION_FILE = "termination.parquet"


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


def termination_probe(params: Params, simulator: str, real_sessions, real_messages, contexts, progress: bool) -> pd.DataFrame:
    """Dialogue-termination predictions of one simulator on held-out real sessions (UserLM)."""
    from dial.generation import ChatGenerator

    probe = params.evaluate.termination
    chosen = realism.select_sessions(real_sessions["session_id"].astype(str).tolist(), probe.n_sessions, probe.seed)
    adapter = paths.simulator_adapter_dir(simulator)
    generator = ChatGenerator.load(paths.BASE_MODEL_DIR, adapter, params.simulate.precision, params.simulate.batch_size)
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
    )


def tsne_picture(params: Params, real_messages: pd.DataFrame, simulated: dict) -> tuple[str, bytes | None]:
    """(status, PNG or None) of the optional t-SNE picture of real vs simulated sessions."""
    from dial.evaluation import embeddings

    model_dir = embeddings.embedding_model_dir(paths.EMBEDDING_MODEL_CACHE)
    if model_dir is None:
        status = f"skipped: no offline embedding model installed ({embeddings.INSTALL_HINT})"
        log.warning("evaluate: t-SNE picture %s", status)
        return status, None
    tsne_params = params.evaluate.tsne
    groups = {"real": real_messages, **{name: messages for name, (_, messages, _) in simulated.items()}}
    texts, labels = [], []
    for name, messages in groups.items():
        users = messages[messages["role"] == "user"].sort_values(["session_id", "turn_index"])
        by_session = users.groupby("session_id")["text"].agg(lambda parts: "\n".join(parts))
        for session_id in embeddings.sample_sessions(by_session.index, tsne_params.max_sessions_per_group, params.seed):
            texts.append(by_session[session_id])
            labels.append(name)
    vectors = embeddings.embed_texts(model_dir, texts)
    layout = embeddings.tsne(vectors, tsne_params.perplexity, seed=params.seed)
    log.info("evaluate: t-SNE of %d sessions", len(texts))
    return f"on: {len(texts)} sessions", embeddings.tsne_figure(layout, labels, list(groups))


def run_evaluate(params: Params, simulator_ids: Sequence[str], data_dir: Path, reports_dir: Path, progress: bool = True) -> dict:
    """Judge, measure and report every simulator against the real held-out sessions."""
    simulated = load_simulated(simulator_ids)
    contexts = io.CONTEXTS.read(paths.CONTEXTS_FILE)
    real_sessions, real_messages = grounding_real_sessions(
        simulated,
        io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR)),
        io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR)),
    )

    taxonomy = load_taxonomy(params.judge.taxonomy)
    all_messages = pd.concat([real_messages, *(messages for _, messages, _ in simulated.values())], ignore_index=True)
    items, item_sessions = judge_inputs(all_messages, salt=params.judge.id_salt)
    log.info("evaluate: judge %s on %d sessions (real and simulated, mixed, opaque ids)", params.judge.backend, len(items))
    with build_judge(params.judge, taxonomy) as judge:
        issues, user_actions = judge.annotate(items, progress=progress)
    io.ISSUES.write(issues, Path(data_dir) / ISSUES_FILE)
    io.USER_ACTIONS.write(user_actions, Path(data_dir) / USER_ACTIONS_FILE)

    termination = {}
    if params.evaluate.termination.enabled:
        for simulator in simulator_ids:
            termination[simulator] = termination_probe(params, simulator, real_sessions, real_messages, contexts, progress)
        io.TERMINATION_PREDICTIONS.write(pd.concat(termination.values(), ignore_index=True), Path(data_dir) / TERMINATION_FILE)

    discriminator_reports = {}
    for simulator in simulator_ids:
        report_file = paths.discriminator_report(simulator)
        discriminator_reports[simulator] = json.loads(report_file.read_text(encoding="utf-8")) if report_file.exists() else None

    metrics = evaluate(
        real_sessions,
        real_messages,
        simulated,
        contexts,
        issues=issues,
        user_actions=user_actions,
        item_sessions=item_sessions,
        discriminator_reports=discriminator_reports,
        termination=termination or None,
        params=params.evaluate,
        issue_categories=[category.name for category in taxonomy.categories],
        action_groups={action.name: action.group for action in taxonomy.actions},
    )
    extra_figures = {}
    if params.evaluate.tsne.enabled:
        status, png = tsne_picture(params, real_messages, simulated)
        metrics["settings"]["tsne"] = status
        if png is not None:
            extra_figures["tsne"] = png
    loss_files = {"sft": paths.SFT_LOSS}
    loss_files.update({simulator: paths.dpo_loss_file(simulator) for simulator in simulator_ids if simulator.startswith("it")})
    write_reports(metrics, reports_dir, loss_files={name: path for name, path in loss_files.items() if Path(path).exists()},
                  extra_figures=extra_figures)
    log.info("evaluate: wrote %s/metrics.json and %s/report.md", reports_dir, reports_dir)
    return metrics
