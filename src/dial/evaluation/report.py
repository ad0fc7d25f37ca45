"""The evaluation report: flat metrics for `dvc metrics`, CSV data for `dvc plots`, and a markdown
report with figures that answers one question: did DIAL make the simulator more like real users?

Outputs of `write_reports(metrics, reports_dir)` (all written atomically, byte-identical for the
same metrics):

    metrics.json                     flat keys `<group>.<metric path>` (real, zero-shot, sft, it1, …),
                                     numbers and booleans only, floats rounded
    report.md                        paper-style tables (rows real, zero-shot, sft, it1…itK) and figures
    figures/*.png                    matplotlib (Agg, object API, no pyplot state), PNG metadata fixed
    plots/discriminator.csv          accuracy per turn and overall, one row per simulator
    plots/lexical.csv                lexical means and UserLM metrics, one row per group
    plots/issue_rates.csv            issue rate (%) and its standard error per group
    plots/issue_category_deltas.csv  per simulator and category: real and simulated shares, delta (pp)
    plots/user_actions.csv           per group and action: rate (%) and its standard error

The training loss curves already exist (reports/sft/loss.csv, reports/dpo/<it>/loss.csv); pass
them as `loss_files` to draw them in the report too.

Missing inputs show as "—" in tables and are left out of figures, never an error.
"""

from __future__ import annotations

import csv
import io as stdio
import math
from pathlib import Path
from typing import Mapping

from dial.io import atomic_path, write_json_atomic, write_text_atomic

MISSING = "—"
DISCRIMINATOR_TURNS = ("turn_1", "turn_5", "turn_10", "turn_25", "overall")
LEXICAL_METRICS = ("word_entropy", "type_token_ratio", "bigram_diversity")
FIGURE_DPI = 100
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same bytes across upgrades
BASELINE = "sft"


# --------------------------------------------------------------------------------------------
# Flat metrics
# --------------------------------------------------------------------------------------------


def _flatten(prefix: str, value, out: dict, decimals: int) -> None:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out, decimals)
    elif isinstance(value, bool):
        out[prefix] = value
    elif isinstance(value, int):
        out[prefix] = int(value)
    elif isinstance(value, float):
        if math.isfinite(value):
            out[prefix] = round(value, decimals) + 0.0  # + 0.0: no "-0.0"
    # None, strings and lists are not metrics (the report shows them).


def flat_metrics(metrics: dict, decimals: int | None = None) -> dict:
    """`{"real.lexical.word_entropy_mean": 6.6, "sft.discriminator.overall.accuracy": 0.8, …}`:
    every numeric leaf of every group (and `judge.*` counts), sorted, floats rounded."""
    decimals = decimals if decimals is not None else int(metrics.get("settings", {}).get("decimals", 6))
    out: dict = {}
    for name in metrics["order"]:
        _flatten(name, metrics["groups"][name], out, decimals)
    _flatten("judge", metrics.get("judge", {}), out, decimals)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# Lookups and formatting
# --------------------------------------------------------------------------------------------


def _get(metrics: dict, group: str, *path):
    value = metrics["groups"].get(group)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _fmt(value, kind: str = "f3") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":  # a rate in [0, 1] as a percentage
        return f"{100 * value:.2f}%"
    if kind == "pct1":
        return f"{100 * value:.1f}"
    if kind == "int":
        return str(int(value))
    if kind == "p":
        return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"
    return f"{value:.{int(kind[1:])}f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
    return buffer.getvalue()


def _simulators(metrics: dict) -> list[str]:
    return [name for name in metrics["order"] if name != "real"]


def _rate_se(rate: float | None, n: int | None) -> float | None:
    if rate is None or not n:
        return None
    return math.sqrt(rate * (1 - rate) / n)


# --------------------------------------------------------------------------------------------
# Plot data (CSV)
# --------------------------------------------------------------------------------------------


def plot_tables(metrics: dict) -> dict[str, str]:
    """File name → CSV text of every plot-data file."""
    order, simulators = metrics["order"], _simulators(metrics)
    files = {}
    files["discriminator.csv"] = _csv(
        ["simulator", "step", *[f"accuracy_{t}" for t in DISCRIMINATOR_TURNS], "f1_overall", "mcc_overall"],
        [
            [name, step]
            + [_get(metrics, name, "discriminator", t, "accuracy") for t in DISCRIMINATOR_TURNS]
            + [_get(metrics, name, "discriminator", "overall", "f1"), _get(metrics, name, "discriminator", "overall", "mcc")]
            for step, name in enumerate(simulators)
        ],
    )
    files["lexical.csv"] = _csv(
        ["group", *[f"{m}_mean" for m in LEXICAL_METRICS], "first_turn_diversity", "intent_decomposition"],
        [
            [name]
            + [_get(metrics, name, "lexical", f"{m}_mean") for m in LEXICAL_METRICS]
            + [_get(metrics, name, "first_turn_diversity", "value"), _get(metrics, name, "intent_decomposition", "value")]
            for name in order
        ],
    )

    def pct(value):
        return None if value is None else 100 * value

    files["issue_rates.csv"] = _csv(
        ["group", "issue_rate_pct", "se_pct", "kl_from_real"],
        [
            [name, pct(_get(metrics, name, "issues", "rate")), pct(_get(metrics, name, "issues", "se")),
             _get(metrics, name, "issues", "kl_from_real")]
            for name in order
        ],
    )
    rows = []
    for name in simulators:
        for category, real_share, sim_share in _category_shares(metrics, name):
            rows.append([name, category, pct(real_share), pct(sim_share), pct(sim_share - real_share)])
    files["issue_category_deltas.csv"] = _csv(["simulator", "category", "real_share_pct", "sim_share_pct", "delta_pp"], rows)
    rows = []
    for name in order:
        actions = _get(metrics, name, "actions") or {}
        n = actions.get("n_user_messages")
        for action, group in sorted((_action_groups(metrics)).items()):
            rate = actions.get("rates", {}).get(action, 0.0) if n else None
            rows.append([name, action, group, pct(rate), pct(_rate_se(rate, n))])
    files["user_actions.csv"] = _csv(["group", "action", "action_group", "rate_pct", "se_pct"], rows)
    return files


def _category_shares(metrics: dict, name: str) -> list[tuple[str, float, float]]:
    """(category, real share, simulated share) over the categories either side has; empty when
    either side has no judged issue."""
    real = _get(metrics, "real", "issues", "categories")
    sim = _get(metrics, name, "issues", "categories")
    if not real or not sim:
        return []
    return [(c, real.get(c, 0.0), sim.get(c, 0.0)) for c in sorted(set(real) | set(sim))]


def _action_groups(metrics: dict) -> dict[str, str]:
    return dict(metrics.get("judge", {}).get("action_groups", {}))


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = stdio.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata=PNG_METADATA)
    return buffer.getvalue()


_COLORS = ["#333333", "#999999", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _color(metrics: dict, name: str) -> str:
    return _COLORS[metrics["order"].index(name) % len(_COLORS)]


def figure_discriminator(metrics: dict) -> bytes | None:
    simulators = [n for n in _simulators(metrics) if _get(metrics, n, "discriminator")]
    if not simulators:
        return None
    figure = _new_figure(6.4, 3.8)
    axes = figure.add_subplot()
    x = list(range(len(DISCRIMINATOR_TURNS)))
    for name in simulators:
        values = [_get(metrics, name, "discriminator", t, "accuracy") for t in DISCRIMINATOR_TURNS]
        # NaN breaks the line: a turn without data is a gap, not a straight segment across it.
        axes.plot(x, [math.nan if v is None else 100 * v for v in values], marker="o", label=name, color=_color(metrics, name))
    axes.axhline(50, color="black", linestyle="--", linewidth=0.8, label="chance (ideal)")
    axes.set_xticks(x, [t.replace("_", " ") for t in DISCRIMINATOR_TURNS])
    axes.set_ylabel("discriminator accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Discriminator accuracy by user turn (lower = more realistic)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def figure_issue_rates(metrics: dict) -> bytes | None:
    names = [n for n in metrics["order"] if _get(metrics, n, "issues", "rate") is not None]
    if not names:
        return None
    figure = _new_figure(6.4, 3.6)
    axes = figure.add_subplot()
    rates = [100 * _get(metrics, n, "issues", "rate") for n in names]
    errors = [100 * (_get(metrics, n, "issues", "se") or 0.0) for n in names]
    axes.bar(range(len(names)), rates, yerr=errors, capsize=4, color=[_color(metrics, n) for n in names])
    if "real" in names:
        axes.axhline(rates[names.index("real")], color="black", linestyle="--", linewidth=0.8)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("chatbot messages with an issue (%)")
    axes.set_title("Issue rate (± standard error)")
    figure.tight_layout()
    return _png(figure)


def figure_category_deltas(metrics: dict) -> tuple[str, bytes] | None:
    """Figure 4: category share deltas (simulated − real, percentage points) of the last simulator
    in the report order that has judged issues."""
    candidates = [n for n in _simulators(metrics) if _category_shares(metrics, n)]
    if not candidates:
        return None
    name = candidates[-1]
    shares = sorted(_category_shares(metrics, name), key=lambda item: (item[2] - item[1], item[0]))
    figure = _new_figure(6.4, max(2.5, 0.28 * len(shares) + 1.2))
    axes = figure.add_subplot()
    deltas = [100 * (s - r) for _, r, s in shares]
    axes.barh(range(len(shares)), deltas, color=["#d62728" if d < 0 else "#2ca02c" for d in deltas])
    axes.set_yticks(range(len(shares)), [c for c, _, _ in shares], fontsize=7)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("share of flagged messages: simulated − real (percentage points)")
    axes.set_title(f"Issue-category discrepancy: {name} vs real")
    figure.tight_layout()
    return name, _png(figure)


def figure_lexical(metrics: dict) -> bytes | None:
    names = [n for n in metrics["order"] if _get(metrics, n, "lexical", "word_entropy_mean") is not None]
    if not names:
        return None
    figure = _new_figure(9.0, 3.2)
    for i, metric in enumerate(LEXICAL_METRICS):
        axes = figure.add_subplot(1, len(LEXICAL_METRICS), i + 1)
        means = [_get(metrics, n, "lexical", f"{metric}_mean") for n in names]
        stds = [_get(metrics, n, "lexical", f"{metric}_std") or 0.0 for n in names]
        axes.bar(range(len(names)), [m if m is not None else 0.0 for m in means], yerr=stds, capsize=3,
                 color=[_color(metrics, n) for n in names])
        real = _get(metrics, "real", "lexical", f"{metric}_mean")
        if real is not None:
            axes.axhline(real, color="black", linestyle="--", linewidth=0.8)
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axes.set_title(metric.replace("_", " ") + " (mean ± std)", fontsize=9)
    figure.tight_layout()
    return _png(figure)


def figure_user_actions(metrics: dict) -> bytes | None:
    group_of = _action_groups(metrics)
    names = [n for n in metrics["order"] if _get(metrics, n, "actions", "n_user_messages")]
    if not group_of or not names:
        return None
    action_groups = sorted(set(group_of.values()))
    n_actions = max(sum(1 for g in group_of.values() if g == group) for group in action_groups)
    figure = _new_figure(4.0 * len(action_groups), max(2.8, 0.35 * n_actions * max(1, len(names)) / 2 + 1.2))
    width = 0.8 / len(names)
    for i, group in enumerate(action_groups):
        axes = figure.add_subplot(1, len(action_groups), i + 1)
        actions = sorted(a for a, g in group_of.items() if g == group)
        for j, name in enumerate(names):
            n = _get(metrics, name, "actions", "n_user_messages")
            rates = [(_get(metrics, name, "actions", "rates") or {}).get(a, 0.0) for a in actions]
            errors = [100 * (_rate_se(r, n) or 0.0) for r in rates]
            axes.barh([k + j * width for k in range(len(actions))], [100 * r for r in rates], height=width,
                      xerr=errors, capsize=2, label=name, color=_color(metrics, name))
        axes.set_yticks([k + 0.4 - width / 2 for k in range(len(actions))], actions, fontsize=7)
        axes.invert_yaxis()  # first action and the real users on top
        axes.set_xlabel("user messages with the action (%)", fontsize=8)
        axes.set_title(group, fontsize=9)
        if i == 0:
            handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return _png(figure)


def figure_losses(loss_files: Mapping[str, Path]) -> bytes | None:
    curves = {}
    for name, path in sorted(loss_files.items()):
        path = Path(path)
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as handle:
            rows = [(float(r["step"]), float(r["loss"])) for r in csv.DictReader(handle) if r.get("loss") not in (None, "")]
        if rows:
            curves[name] = rows
    if not curves:
        return None
    figure = _new_figure(6.4, 3.4)
    axes = figure.add_subplot()
    for name, rows in curves.items():
        axes.plot(*zip(*rows), label=name)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------

def _verdict_metrics(metrics: dict) -> list[tuple[str, callable, str]]:
    """(label, value of a simulator, "lower"/"higher" is better); values are distances to the real
    users where the real users are the target."""
    def real_value(*path):
        return _get(metrics, "real", *path)

    def closeness(*path):
        def value(name):
            ours, real = _get(metrics, name, *path), real_value(*path)
            return None if ours is None or real is None else abs(ours - real)
        return value

    return [
        ("discriminator accuracy overall: distance to 50%",
         lambda n: None if _get(metrics, n, "discriminator", "overall", "accuracy") is None
         else abs(_get(metrics, n, "discriminator", "overall", "accuracy") - 0.5), "lower"),
        ("word entropy: distance to real", closeness("lexical", "word_entropy_mean"), "lower"),
        ("type-token ratio: distance to real", closeness("lexical", "type_token_ratio_mean"), "lower"),
        ("bigram diversity: distance to real", closeness("lexical", "bigram_diversity_mean"), "lower"),
        ("first-turn diversity: distance to real", closeness("first_turn_diversity", "value"), "lower"),
        ("intent decomposition: distance to real", closeness("intent_decomposition", "value"), "lower"),
        ("issue rate: distance to real", closeness("issues", "rate"), "lower"),
        ("issue categories KL(real‖sim)", lambda n: _get(metrics, n, "issues", "kl_from_real"), "lower"),
        ("user actions BCE (total)", lambda n: _get(metrics, n, "actions", "bce", "total"), "lower"),
        ("termination F1", lambda n: _get(metrics, n, "termination", "f1"), "higher"),
    ]


def verdict(metrics: dict) -> tuple[str, list[str], list[list[str]]]:
    """One sentence and a table (header, rows): each later simulator vs the baseline (sft, else the
    first simulator in the report order)."""
    simulators = _simulators(metrics)
    if not simulators:
        return "No simulator was evaluated.", [], []
    baseline = BASELINE if BASELINE in simulators else simulators[0]
    later = simulators[simulators.index(baseline) + 1 :]
    rows, wins = [], {name: [0, 0] for name in later}
    for label, value, better in _verdict_metrics(metrics):
        base = value(baseline)
        row = [label, _fmt(base, "f3")]
        for name in later:
            ours = value(name)
            if ours is None or base is None:
                row.append(MISSING)
                continue
            improved = ours < base if better == "lower" else ours > base
            same = math.isclose(ours, base, rel_tol=1e-9, abs_tol=1e-12)
            wins[name][1] += 1
            wins[name][0] += int(improved and not same)
            row.append(f"{_fmt(ours, 'f3')} {'=' if same else ('✓' if improved else '✗')}")
        rows.append(row)
    if not later:
        return f"Only the baseline simulator ({baseline}) was evaluated: no later simulator to compare.", [], []
    parts = [f"{name} is closer to real than {baseline} on {w} of {n} comparable metrics" for name, (w, n) in wins.items()]
    return "; ".join(parts) + ".", ["metric", baseline, *later], rows


def render_markdown(metrics: dict, figures: Mapping[str, str], category_simulator: str | None = None) -> str:
    order, simulators = metrics["order"], _simulators(metrics)
    sentence, verdict_header, verdict_rows = verdict(metrics)
    lines = [
        "# DIAL evaluation",
        "",
        "Real users vs every simulator (zero-shot, SFT, DIAL iterations). Lower discriminator accuracy (50% is",
        "ideal), values closer to the real users' row, lower KL and BCE, and higher termination F1 mean a more",
        "realistic simulator. \"—\" = not available (missing input or undefined).",
        "",
        "## Did DIAL make the simulator more real?",
        "",
        sentence,
        "",
    ]
    if verdict_rows:
        lines += [_table(verdict_header, verdict_rows), ""]
        lines += ["✓ closer to real than the baseline, ✗ further, = equal. Distances are shown, not raw values.", ""]

    lines += ["## Sessions", ""]
    lines.append(_table(
        ["group", "sessions", "user messages", "chatbot messages", "words / session", "judged sessions"],
        [[n, _fmt(_get(metrics, n, "n_sessions"), "int"), _fmt(_get(metrics, n, "n_user_messages"), "int"),
          _fmt(_get(metrics, n, "n_chatbot_messages"), "int"), _fmt(_get(metrics, n, "lexical", "n_words_mean"), "f1"),
          _fmt(_get(metrics, n, "issues", "n_sessions_judged"), "int")] for n in order],
    ))
    turns = metrics.get("settings", {}).get("max_user_turns")
    lines += ["", f"Lexical and intent metrics use each session's first {turns} user messages." if turns else "", ""]

    lines += ["## Linguistic diversity (paper table 1) and UserLM realism", ""]
    lines.append(_table(
        ["group", "entropy (bits)", "TTR", "bigram", "first-turn diversity", "intent overlap"],
        [[n]
         + [f"{_fmt(_get(metrics, n, 'lexical', f'{m}_mean'), 'f3')} ± {_fmt(_get(metrics, n, 'lexical', f'{m}_std'), 'f3')}"
            if _get(metrics, n, "lexical", f"{m}_mean") is not None else MISSING for m in LEXICAL_METRICS]
         + [_fmt(_get(metrics, n, "first_turn_diversity", "value"), "pct"),
            _fmt(_get(metrics, n, "intent_decomposition", "value"), "pct")] for n in order],
    ))
    lines += ["", "Mean ± sample std across sessions; median in metrics.json. Paper (real users): 6.60 / 0.483 / 0.861.", ""]
    if "lexical" in figures:
        lines += [f"![lexical metrics]({figures['lexical']})", ""]

    lines += ["## Discriminator (paper table 2)", ""]
    header = ["discriminator"] + [f"{t.replace('_', ' ')} {m}" for t in DISCRIMINATOR_TURNS for m in ("acc", "F1", "MCC")]
    lines.append(_table(
        header,
        [[n] + [_fmt(_get(metrics, n, "discriminator", t, m), "pct1") for t in DISCRIMINATOR_TURNS for m in ("accuracy", "f1", "mcc")]
         for n in order],
    ))
    lines += ["", "In % (MCC × 100), on held-out sessions; a discriminator per simulator, trained identically.", ""]
    if "discriminator" in figures:
        lines += [f"![discriminator accuracy]({figures['discriminator']})", ""]

    lines += ["## Issues (paper figure 2, table 3)", ""]
    lines.append(_table(
        ["group", "issue rate", "± SE", "flagged / chatbot messages", "KL(real‖sim)", "r (real vs sim, per chatbot)", "p"],
        [[n, _fmt(_get(metrics, n, "issues", "rate"), "pct"), _fmt(_get(metrics, n, "issues", "se"), "pct"),
          f"{_fmt(_get(metrics, n, 'issues', 'k'), 'int')} / {_fmt(_get(metrics, n, 'issues', 'n'), 'int')}"
          if _get(metrics, n, "issues") else MISSING,
          _fmt(_get(metrics, n, "issues", "kl_from_real"), "f3") if n != "real" else MISSING,
          _fmt(_get(metrics, n, "predictive_validity", "r"), "f3"), _fmt(_get(metrics, n, "predictive_validity", "p"), "p")]
         for n in order],
    ))
    why = sorted({_get(metrics, n, "predictive_validity", "why") for n in simulators} - {None})
    lines += [""] + [f"Predictive validity not applicable: {w}." for w in why] + [""]
    smoothing = metrics.get("settings", {}).get("kl_smoothing")
    lines += [f"KL in nats over issue-category shares with additive smoothing α = {smoothing}.", ""]
    if "issue_rates" in figures:
        lines += [f"![issue rates]({figures['issue_rates']})", ""]
    if "issue_category_deltas" in figures:
        lines += [f"Issue-category discrepancy of {category_simulator} (paper figure 4):", "",
                  f"![issue category deltas]({figures['issue_category_deltas']})", ""]

    lines += ["## User actions (paper table 4, figure 5)", ""]
    action_groups = sorted(set(_action_groups(metrics).values()))
    lines.append(_table(
        ["simulator", "BCE total", *action_groups],
        [[n, _fmt(_get(metrics, n, "actions", "bce", "total"), "f5")]
         + [_fmt(_get(metrics, n, "actions", "bce", "groups", g, "bce"), "f5") for g in action_groups] for n in simulators],
    ))
    lines += ["", "BCE(real, simulated) of per-action rates, mean over the group's actions; lower is better.", ""]
    if "user_actions" in figures:
        lines += [f"![user actions]({figures['user_actions']})", ""]

    lines += ["## A/B replication (paper table 5)", ""]
    ab_rows = []
    for n in simulators:
        for pair, result in sorted((_get(metrics, n, "ab") or {}).items()):
            sim, real = result.get("simulation", {}), result.get("real", {})
            ab_rows.append([
                n, f"{result.get('control')} → {result.get('treatment')}",
                _fmt(sim.get("control_rate"), "pct"), _fmt(sim.get("treatment_rate"), "pct"),
                _fmt(sim.get("z"), "f2"), _fmt(sim.get("p"), "p"),
                _fmt(real.get("control_rate"), "pct"), _fmt(real.get("treatment_rate"), "pct"),
                _fmt(real.get("z"), "f2"), _fmt(real.get("p"), "p"), _fmt(result.get("directions_agree")),
            ])
    if ab_rows:
        lines.append(_table(
            ["simulator", "control → treatment", "sim control", "sim treatment", "sim z", "sim p",
             "real control", "real treatment", "real z", "real p", "directions agree"], ab_rows))
        reasons = sorted({
            f"{side}: {r[side]['why']}" for n in simulators for r in (_get(metrics, n, "ab") or {}).values()
            for side in ("simulation", "real") if not r.get(side, {}).get("applicable", True)
        })
        lines += [""] + [f"- {reason}" for reason in reasons]
    else:
        lines.append("No A/B pair configured.")
    lines += ["", "Two-sided pooled two-proportion z-test; positive z = the treatment has more issues.", ""]

    lines += ["## Dialogue termination (UserLM)", ""]
    lines.append(_table(
        ["simulator", "precision", "recall", "F1", "positions", "real ends", "predicted ends"],
        [[n, _fmt(_get(metrics, n, "termination", "precision"), "f3"), _fmt(_get(metrics, n, "termination", "recall"), "f3"),
          _fmt(_get(metrics, n, "termination", "f1"), "f3"), _fmt(_get(metrics, n, "termination", "n_positions"), "int"),
          _fmt(_get(metrics, n, "termination", "n_real_ends"), "int"), _fmt(_get(metrics, n, "termination", "n_predicted_ends"), "int")]
         for n in simulators],
    ))
    lines += ["", "At every position after a chatbot turn of held-out real sessions: did the simulator end the", "conversation where the real user did?", ""]
    if "losses" in figures:
        lines += ["## Training loss", "", f"![training loss]({figures['losses']})", ""]
    tsne_status = str(metrics.get("settings", {}).get("tsne", "off"))
    if "tsne" in figures:
        lines += ["## Real vs simulated sessions (appendix B.1)", "", f"![t-SNE of session embeddings]({figures['tsne']})", "",
                  "Sentence embeddings of each session's user messages (all-MiniLM-L6-v2), t-SNE to 2-D: overlapping", "clouds mean the simulated users write like the real ones.", ""]
    elif tsne_status.startswith("skipped"):
        lines += ["## Real vs simulated sessions (appendix B.1)", "", f"t-SNE picture {tsne_status}.", ""]
    judge = metrics.get("judge", {})
    if judge.get("n_judged_sessions_outside_groups"):
        lines += [f"Judged sessions outside every group (not counted): {judge['n_judged_sessions_outside_groups']}.", ""]
    return "\n".join(line for line in _squeeze(lines)) + "\n"


def _squeeze(lines: list[str]) -> list[str]:
    """No runs of blank lines (parts that rendered nothing)."""
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_bytes(path: Path, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def write_reports(
    metrics: dict, reports_dir, loss_files: Mapping[str, object] | None = None, extra_figures: Mapping[str, bytes] | None = None
) -> list[Path]:
    """metrics.json, report.md, figures/*.png and plots/*.csv under `reports_dir` (module docstring).
    Returns the written paths. Figures without data are not drawn (and not referenced)."""
    reports_dir = Path(reports_dir)
    written: list[Path] = []
    figures: dict[str, str] = {}
    category_simulator = None
    drawn = {
        "lexical": figure_lexical(metrics),
        "discriminator": figure_discriminator(metrics),
        "issue_rates": figure_issue_rates(metrics),
        "user_actions": figure_user_actions(metrics),
        "losses": figure_losses({k: Path(v) for k, v in (loss_files or {}).items()}),
        **dict(extra_figures or {}),  # e.g. the t-SNE picture (dial.evaluation.embeddings)
    }
    deltas = figure_category_deltas(metrics)
    if deltas is not None:
        category_simulator, drawn["issue_category_deltas"] = deltas
    for name, png in drawn.items():
        if png is None:
            continue
        path = reports_dir / "figures" / f"{name}.png"
        _write_bytes(path, png)
        written.append(path)
        figures[name] = f"figures/{name}.png"
    for name, text in plot_tables(metrics).items():
        path = reports_dir / "plots" / name
        write_text_atomic(path, text)
        written.append(path)
    write_json_atomic(reports_dir / "metrics.json", flat_metrics(metrics))
    written.append(reports_dir / "metrics.json")
    write_text_atomic(reports_dir / "report.md", render_markdown(metrics, figures, category_simulator))
    written.append(reports_dir / "report.md")
    return written
