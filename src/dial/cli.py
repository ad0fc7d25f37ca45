"""`dial`: inspect and validate the pipeline's artifacts.

    dial check PATH...        validate artifacts against their schemas
    dial check --all          every artifact under data/, plus the cross-artifact checks
    dial query "SQL"          DuckDB over all artifacts (one view per artifact; `dial views`)
    dial views                list the views `dial query` offers
    dial show SESSION_ID      print one session (real or simulated) as a transcript
    dial chat                 a simulator talks live to a chatbot, or to you
    dial serve --model-dir D  an OpenAI-compatible endpoint for a local model
    dial pipeline             rewrite dvc.yaml's per-iteration stages from dial.iterations
    dial evaluate-chatbot     a trained simulator against your chatbot(s): issue rates, A/B test
    dial export SIM OUT       a trained simulator as a merged Hugging Face checkpoint with a model card
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dial import io
from dial.checks import connect, run_checks
from dial.params import load_params
from dial.pipeline import simulator_ids
from dial.stage import configure_logging, fail, guarded

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)

# Latest-stage aliases: `messages` means the scrubbed messages once they exist.
ALIASES = {
    "sessions": ("scrubbed_sessions", "ingested_sessions"),
    "messages": ("scrubbed_messages", "ingested_messages"),
    "users": ("scrubbed_users", "ingested_users"),
}


def view_name(path: Path, root: Path) -> str:
    """data/ingested/messages.parquet -> ingested_messages; data/splits/splits.parquet -> splits."""
    relative = path.relative_to(root).with_suffix("")
    parts = [part for part in relative.parts if part not in ("data",)]
    if len(parts) >= 2 and parts[-1] == parts[-2]:
        parts = parts[:-1]
    return "_".join(parts).replace("-", "_").replace(".", "_")


def discover_views(root: Path = Path(".")) -> dict[str, Path]:
    """One view per dial artifact under data/ (files whose Parquet metadata names a schema)."""
    views: dict[str, Path] = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        if path.name.startswith("."):
            continue  # an in-flight temp file
        try:
            io.artifact_of(path)
        except (io.ArtifactError, FileNotFoundError):
            continue
        views[view_name(path, root)] = path
    for alias, candidates in ALIASES.items():
        for candidate in candidates:
            if candidate in views and alias not in views:
                views[alias] = views[candidate]
                break
    return views


@app.command()
@guarded
def check(
    paths: list[Path] = typer.Argument(None, help="Parquet artifacts to validate."),
    all_: bool = typer.Option(False, "--all", help="Every artifact under data/ plus cross-artifact checks."),
    params_file: Path = typer.Option(Path("params.yaml"), help="For the token budgets."),
) -> None:
    """Validate artifacts against their pandera schemas (and, with --all, the DuckDB invariants)."""
    if not paths and not all_:
        fail("name one or more artifact paths, or use --all")
    views = discover_views() if all_ else {}
    targets = list(paths or []) + sorted(set(views.values()) - set(paths or []))
    failures = 0
    for path in targets:
        try:
            artifact, frame = io.read_any(path)
            typer.echo(f"ok   {path}: {artifact.name}, {len(frame)} rows")
        except (io.ArtifactError, FileNotFoundError) as exc:
            failures += 1
            typer.secho(f"FAIL {exc}", fg=typer.colors.RED)
    if all_:
        limits = {}
        if params_file.exists():
            params = load_params(params_file)
            limits = {"max_context_tokens": params.context.max_tokens, "max_sample_tokens": params.sft_samples.max_tokens}
        for result in run_checks(connect(views), limits=limits, available=set(views)):
            if result.passed:
                typer.echo(f"ok   {result.check.name}: {result.check.description}")
            else:
                failures += 1
                typer.secho(
                    f"FAIL {result.check.name}: {result.check.description}: {result.n_violations} violation(s)\n"
                    + result.examples.to_string(index=False),
                    fg=typer.colors.RED,
                )
    if failures:
        fail(f"{failures} check(s) failed")


@app.command()
@guarded
def query(
    sql: str = typer.Argument(..., help='e.g. "SELECT role, count(*) FROM messages GROUP BY role"'),
    limit: int = typer.Option(50, help="Rows to print (0 = all)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result (.csv, .parquet, .json)."),
) -> None:
    """Run DuckDB SQL over every artifact (see `dial views` for the table names)."""
    import duckdb
    import pandas as pd

    views = discover_views()
    if not views:
        fail("no artifacts under data/: run `dvc repro` first")
    try:
        result = connect(views).execute(sql).df()
    except duckdb.Error as exc:
        fail(f"query failed: {exc}\navailable views: {', '.join(sorted(views))}")
    if output is not None:
        suffix = output.suffix.lower()
        if suffix == ".csv":
            result.to_csv(output, index=False)
        elif suffix == ".parquet":
            result.to_parquet(output, index=False)
        elif suffix == ".json":
            result.to_json(output, orient="records", lines=True, force_ascii=False)
        else:
            fail(f"{output}: unsupported output format (use .csv, .parquet or .json)")
        typer.echo(f"wrote {len(result)} rows to {output}")
        return
    shown = result if limit == 0 else result.head(limit)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 80):
        typer.echo(shown.to_string(index=False) if len(shown) else "(no rows)")
    if limit and len(result) > limit:
        typer.echo(f"... {len(result) - limit} more rows (use --limit 0 or --output)")


@app.command()
@guarded
def views() -> None:
    """List the DuckDB views `dial query` offers, with their artifact kind and row count."""
    import pyarrow.parquet as pq

    found = discover_views()
    if not found:
        fail("no artifacts under data/: run `dvc repro` first")
    for name, path in sorted(found.items()):
        rows = pq.ParquetFile(path).metadata.num_rows
        typer.echo(f"{name:28s} {io.artifact_of(path).name:14s} {rows:>9d} rows  {path}")


@app.command()
@guarded
def show(
    session_id: str = typer.Argument(..., help="A session id from `dial query` (real or simulated)."),
    width: int = typer.Option(100, help="Wrap messages at this width."),
) -> None:
    """Print one session as a transcript, with its generation metadata when simulated."""
    from dial.transcripts import find_session, render

    typer.echo(render(find_session(session_id), width=width))


@app.command()
@guarded
def chat(
    simulator: str = typer.Option("sft", help="zero-shot, sft, or a DIAL iteration (it1, ...)."),
    chatbot: Optional[str] = typer.Option(None, help="A chatbot name from params.yaml; omit to type the replies yourself."),
    context: Optional[str] = typer.Option(None, help="Real session id whose context grounds the user (default: a held-out one)."),
    max_turns: int = typer.Option(20, help="Stop after this many user messages."),
    seed: int = typer.Option(0),
    params_file: Path = typer.Option(Path("params.yaml")),
) -> None:
    """The simulator plays the user, live: against a configured chatbot, or against you (type
    the chatbot's replies; /quit ends)."""
    from dial import io, paths
    from dial.simulation.chat import chat_loop
    from dial.chatbots import make_chatbots
    from dial.chatbots.replay import partner_turns
    from dial.simulation.backends import load_simulator

    params = load_params(params_file)
    contexts = io.CONTEXTS.read(paths.CONTEXTS_FILE)
    if context is None:
        splits = io.SPLITS.read(paths.SPLITS_FILE)
        held_out = contexts[contexts["user_id"].isin(splits.loc[splits["split"] == "test", "user_id"])]
        row = (held_out if len(held_out) else contexts).sort_values("session_id").iloc[0]
    else:
        found = contexts[contexts["session_id"] == context]
        if found.empty:
            fail(f"{paths.CONTEXTS_FILE}: no context for session {context!r}")
        row = found.iloc[0]
    adapter = paths.simulator_adapter_dir(simulator)
    if adapter is not None and not adapter.exists():
        fail(f"{adapter}: simulator {simulator!r} not trained yet (run `dvc repro`)")
    bot = None
    if chatbot is not None:
        configured = {c.name: c for c in params.chatbots}
        if chatbot not in configured:
            fail(f"chatbot {chatbot!r} is not in {params_file} (have: {', '.join(configured)})")
        messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
        (bot,) = make_chatbots([configured[chatbot]], paths.BASE_MODEL_DIR, partner_turns(messages), params.simulate.precision, 1)
    generator = load_simulator(simulator, params.simulator, paths.BASE_MODEL_DIR, adapter, params.simulate.precision, 1)
    typer.echo(f"simulator {simulator} as the user of session {row['session_id']}\ncontext summary: {row['current_summary']}\n")
    chat_loop(generator, row["context_text"], params.simulate.decoding, bot, ask=input, say=typer.echo,
              max_turns=max_turns, seed=seed, end_marker=params.sft_samples.end_marker,
              message_separator=params.sft_samples.message_separator, real_session_id=str(row["session_id"]))


@app.command()
@guarded
def pipeline(
    check: bool = typer.Option(False, "--check", help="Only report whether dvc.yaml matches params.yaml (exit 1 if not)."),
    params_file: Path = typer.Option(Path("params.yaml")),
    dvc_yaml: Path = typer.Option(Path("dvc.yaml")),
) -> None:
    """Write one simulate/discriminator stage per simulator and one pairs/dpo stage per DIAL
    iteration into dvc.yaml, as `dial.iterations` and `dial.zero_shot` in params.yaml ask (everything
    else is kept)."""
    from dial.pipeline import foreach_items, stage_items, sync_dvc_yaml

    dial_params = load_params(params_file).dial
    iterations, zero_shot = dial_params.iterations, dial_params.zero_shot
    if check:
        if stage_items(dvc_yaml) != foreach_items(iterations, zero_shot):
            fail(f"{dvc_yaml} does not match dial.iterations={iterations}, dial.zero_shot={zero_shot} in {params_file}: "
                 "run `dial pipeline`")
        typer.echo(f"{dvc_yaml} matches dial.iterations={iterations}, dial.zero_shot={zero_shot}")
        return
    changed = sync_dvc_yaml(dvc_yaml, iterations, zero_shot)
    simulators = ", ".join(simulator_ids(iterations, zero_shot))
    typer.echo(f"{dvc_yaml}: {'rewritten' if changed else 'already up to date'} for {iterations} iterations (simulators: {simulators})")


def flatten_overrides(override: dict, prefix: str = "") -> dict[str, object]:
    """{"sft": {"learning_rate": 5e-5}} -> {"sft.learning_rate": 5e-5}; lists stay whole values."""
    flat: dict[str, object] = {}
    for key, value in override.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_overrides(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@app.command()
@guarded
def overrides(
    config: Path = typer.Argument(..., help="A YAML file of params overrides, e.g. configs/gpu.yaml."),
    write: bool = typer.Option(False, "--write", help="Merge into params.yaml (comments kept) instead of printing -S flags."),
    params_file: Path = typer.Option(Path("params.yaml")),
) -> None:
    """Apply a params profile: print it as `-S key=value` flags for `dvc exp run $(dial overrides FILE)`,
    or merge it into params.yaml with --write. Either way the merged params are validated first."""
    import yaml

    from dial.params import Params, ParamsError
    from dial.workspace import deep_update

    try:
        override = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{config}: {exc}")
    merged = deep_update(yaml.safe_load(params_file.read_text(encoding="utf-8")), override)
    try:
        merged_params = Params.model_validate(merged)
    except ValueError as exc:
        raise ParamsError(f"{config} over {params_file}: invalid params: {exc}") from exc
    if write:
        from io import StringIO

        from ruamel.yaml import YAML

        from dial.io import write_text_atomic
        from dial.pipeline import sync_dvc_yaml

        def update_in_place(node, values: dict) -> None:  # keeps params.yaml's comments
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(node.get(key), dict):
                    update_in_place(node[key], value)
                else:
                    node[key] = value

        round_trip = YAML()
        document = round_trip.load(params_file.read_text(encoding="utf-8"))
        update_in_place(document, override)
        buffer = StringIO()
        round_trip.dump(document, buffer)
        write_text_atomic(params_file, buffer.getvalue())
        sync_dvc_yaml(Path("dvc.yaml"), merged_params.dial.iterations, merged_params.dial.zero_shot)
        typer.echo(f"merged {config} into {params_file}; dvc.yaml synced to dial.iterations and dial.zero_shot", err=True)
        return
    flags = []
    for key, value in flatten_overrides(override).items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...").strip()
        if any(ch.isspace() for ch in text):
            fail(f"{config}: {key} = {text!r} holds whitespace, which $(...) would split; use --write")
        flags.append(f"-S {key}={text}")
    typer.echo(" ".join(flags))


@app.command("evaluate-chatbot")
@guarded
def evaluate_chatbot(
    chatbot: list[str] = typer.Option(..., "--chatbot", help="A chatbot name from params.yaml; give two for an A/B test (control first)."),
    simulator: str = typer.Option("", help="zero-shot, sft, or a DIAL iteration (it1, ...); default: the last iteration of params.yaml."),
    n_contexts: int = typer.Option(12, help="Held-out real contexts the simulator plays."),
    n_simulations: int = typer.Option(
        1, help="Sessions per context and chatbot; with more than 1, each chatbot's issue rate per run and its run-to-run spread too."
    ),
    out: Optional[Path] = typer.Option(None, help="Also write the sessions, judgements and summary.json here."),
    params_file: Path = typer.Option(Path("params.yaml")),
) -> None:
    """Run a trained simulator against chatbot(s) and print each one's issue rate, its issue
    categories, for two chatbots the two-proportion z-test of control vs treatment, and with
    --n-simulations > 1 the run-to-run spread of each chatbot's issue rate."""
    from dial.evaluation.chatbot import evaluate_chatbots, render_summary

    params = load_params(params_file)
    simulator = simulator or simulator_ids(params.dial.iterations, params.dial.zero_shot)[-1]
    result = evaluate_chatbots(params, simulator, chatbot, n_contexts, n_simulations, out)
    typer.echo(render_summary(result))


@app.command()
@guarded
def export(
    simulator: str = typer.Argument(..., help="zero-shot, sft, or a DIAL iteration (it1, ...)."),
    out: Path = typer.Argument(..., help="A new folder for the merged checkpoint."),
    params_file: Path = typer.Option(Path("params.yaml")),
) -> None:
    """Write a trained simulator as a merged Hugging Face checkpoint (safetensors, tokenizer and chat
    template, model card with its data, params and realism metrics) that vLLM, `dial serve` or
    another harness loads."""
    import yaml

    from dial import paths
    from dial.simulation.export import export_simulator

    params = load_params(params_file)
    if simulator not in simulator_ids(params.dial.iterations):
        fail(f"unknown simulator {simulator!r} (have: {', '.join(simulator_ids(params.dial.iterations))})")
    export_simulator(
        simulator, out, paths.BASE_MODEL_DIR, paths.simulator_adapter_dir(simulator),
        yaml.safe_load(Path(params_file).read_text(encoding="utf-8")),
        params.sft_samples.end_marker, params.sft_samples.message_separator,
        metrics_file=paths.REPORTS / "metrics.json", data_report_file=paths.REPORTS / "data.json",
    )
    typer.echo(f"exported {simulator} to {out} (serve it: vllm serve {out}, or dial serve --model-dir {out})")


def _serve_command():
    from dial.simulation.serve import serve_command

    return serve_command


app.command("serve", help="An OpenAI-compatible endpoint for a local model (see docs/chatbot-endpoint.md).")(
    guarded(_serve_command())
)


def main() -> None:
    configure_logging()
    app()


if __name__ == "__main__":
    main()
