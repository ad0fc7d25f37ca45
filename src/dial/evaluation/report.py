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

Missing inputs show as "—" in tables and are left out of figures, never an error. Intervals
(`<name>_ci_low` / `<name>_ci_high` beside a metric, see `dial.evaluation.intervals`) are shown as
"[low, high]" next to the value. The verdict marks a difference ✓ / ✗ only when its 95 % interval
excludes zero, and the report opens with a power sentence instead of a verdict when the
discriminators' held-out sets are too small to detect a 10-point change in accuracy. Parts that
other stages may add are rendered when present and skipped when absent: held-out perplexity
(`<simulator>.perplexity`), the simulate reports' truncation shares, the discriminator's
structure-only baseline. The simulator-error table (`<group>.simulator_errors`, the real users'
row being the rules' false-positive floor) follows the issues; the `aggregate` row (simulators
pooled, keys `aggregate.*`) closes the issues and A/B tables when the run has one. Goal alignment
(`<group>.goals`, UGST, the real users' row the control) and the run-to-run spread of each chatbot's
issue rate (`<simulator>.issues.run_spread`, with `simulate.n_simulations` > 1) follow them.
"""

from __future__ import annotations

import csv
import io as stdio
import math
from pathlib import Path
from typing import Mapping

from dial.evaluation import stats
from dial.evaluation.intervals import VERDICT_METRICS, baseline_of
from dial.io import atomic_path, write_json_atomic, write_text_atomic

MISSING = "—"
DISCRIMINATOR_TURNS = ("turn_1", "turn_5", "turn_10", "turn_25", "overall")
LEXICAL_METRICS = ("word_entropy", "type_token_ratio", "bigram_diversity")
FIGURE_DPI = 100
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same bytes across upgrades
NOT_SIMULATED = "not simulated"
# The power sentence: can the run detect discriminator accuracy moving from 50 % to 60 %?
POWER_ACCURACIES = (0.5, 0.6)
POWER_ALPHA = 0.05
POWER_TARGET = 0.8


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
    _flatten("aggregate", metrics.get("aggregate") or {}, out, decimals)  # the pooled simulators' row
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


def _with_interval(entry: dict | None, name: str, kind: str = "f3") -> str:
    """"value [low, high]" of `entry[name]` and its `_ci_low` / `_ci_high` siblings."""
    if not isinstance(entry, dict) or entry.get(name) is None:
        return MISSING
    low, high = entry.get(f"{name}_ci_low"), entry.get(f"{name}_ci_high")
    if low is None or high is None:
        return _fmt(entry[name], kind)
    return f"{_fmt(entry[name], kind)} [{_fmt(low, kind)}, {_fmt(high, kind)}]"


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

def verdict(metrics: dict) -> tuple[str, list[str], list[list[str]]]:
    """One sentence and a table (header, rows): each later simulator vs the baseline (sft, else the
    first simulator in the report order), from `<simulator>.vs_baseline` (dial.evaluation.intervals).
    A cell is ✓ / ✗ only when the 95 % interval of the difference excludes zero."""
    simulators = _simulators(metrics)
    if not simulators:
        return "No simulator was evaluated.", [], []
    baseline = baseline_of(simulators)
    later = simulators[simulators.index(baseline) + 1 :]
    if not later:
        return f"Only the baseline simulator ({baseline}) was evaluated: no later simulator to compare.", [], []
    rows, tally = [], {name: {"better": 0, "worse": 0, "not significant": 0} for name in later}
    for metric in VERDICT_METRICS:
        comparisons = {name: _get(metrics, name, "vs_baseline", metric.key) or {} for name in later}
        first = next(iter(comparisons.values()))
        row = [metric.label, _n_text(metrics, metric.key, baseline, later), _fmt(first.get("baseline_distance"), "f3")]
        for name, found in comparisons.items():
            if found.get("difference") is None:
                row.append(MISSING)
                continue
            if found.get("significant") is None:
                mark = "no interval"
            elif found["significant"]:
                mark = "✓" if found["improved"] else "✗"
                tally[name]["better" if found["improved"] else "worse"] += 1
            else:
                mark = "not significant"
                tally[name]["not significant"] += 1
            row.append(f"{_fmt(found['distance'], 'f3')} (Δ {_with_interval(found, 'difference')}) {mark}")
        rows.append(row)
    parts = []
    for name, counts in tally.items():
        total = sum(counts.values())
        parts.append(
            f"{name} vs {baseline}: closer to real on {counts['better']}, further on {counts['worse']}, "
            f"not significant on {counts['not significant']} of {total} metrics with an interval"
        )
    return "; ".join(parts) + ".", ["metric", "n", baseline, *later], rows


def _n_text(metrics: dict, key: str, baseline: str, later: list[str]) -> str:
    """The n of each side of a verdict row: "sessions: real 6, sft 18, it1 18"."""
    first = _get(metrics, later[0], "vs_baseline", key) or {}
    counts = [] if first.get("n_real") is None else [f"real {first['n_real']}"]
    counts.append(f"{baseline} {_fmt(first.get('n_baseline'), 'int')}")
    counts += [f"{name} {_fmt((_get(metrics, name, 'vs_baseline', key) or {}).get('n'), 'int')}" for name in later]
    return f"{first.get('unit', '')}: {', '.join(counts)}"


def power_sentence(metrics: dict) -> str | None:
    """A plain sentence when the discriminators' held-out sets are too small to detect accuracy
    moving from 50 % to 60 % (two-proportion test, α = 0.05, power 0.8); None when they are large
    enough or when no two discriminators are compared."""
    simulators = _simulators(metrics)
    baseline = baseline_of(simulators)
    if baseline is None:
        return None
    compared = simulators[simulators.index(baseline) :]
    sizes = [_get(metrics, name, "discriminator", "overall", "n") for name in compared]
    sizes = [int(n) for n in sizes if n]
    if len(sizes) < 2:
        return None
    n = min(sizes)
    low, high = POWER_ACCURACIES
    power = stats.two_proportion_power(n, low, high, POWER_ALPHA)
    if power >= POWER_TARGET:
        return None
    needed = stats.two_proportion_sample_size(low, high, POWER_ALPHA, POWER_TARGET)
    return (
        f"This run is too small to say whether DIAL made the simulator more real: with {n} held-out user messages "
        f"per discriminator, a two-proportion test (α = {POWER_ALPHA}) detects a 10-point change in discriminator "
        f"accuracy ({100 * low:.0f}% vs {100 * high:.0f}%) with power {power:.2f}, not {POWER_TARGET}; that needs about "
        f"{needed} messages per discriminator (more, since messages of one session are not independent). "
        "The table below shows the differences with their 95% intervals; read no verdict from it."
    )


def structure_sentence(metrics: dict) -> str | None:
    """When a structure-only baseline beats chance clearly (its interval above 0.5)."""
    winners = []
    for name in _simulators(metrics):
        baseline = _get(metrics, name, "discriminator", "structure_baseline") or {}
        if baseline.get("accuracy_ci_low") is not None and baseline["accuracy_ci_low"] > 0.5:
            winners.append(f"{name} ({_with_interval(baseline, 'accuracy', 'pct1')} %)")
    if not winners:
        return None
    return (
        "A logistic regression on structural features alone (message lengths, turn counts, …) tells real from "
        f"simulated sessions better than chance for {', '.join(winners)}: the discriminator can win on structure, "
        "not only on what the users say."
    )


def _discriminator_cell(metrics: dict, name: str, turn: str, metric: str) -> str:
    limit = metrics.get("settings", {}).get("simulated_user_turns")
    if limit and name != "real" and turn.startswith("turn_") and int(turn[len("turn_"):]) > limit:
        return NOT_SIMULATED
    entry = _get(metrics, name, "discriminator", turn)
    if metric == "accuracy":
        return _with_interval(entry, "accuracy", "pct1")
    return _fmt(_get(metrics, name, "discriminator", turn, metric), "pct1")


def _perplexity_lines(metrics: dict) -> list[str]:
    """The held-out perplexity table; a simulator after the baseline (sft) whose interval lies
    entirely above the baseline's is flagged: DIAL must not make real users less predictable."""
    names = [n for n in _simulators(metrics) if _get(metrics, n, "perplexity", "value") is not None]
    if not names:
        return []
    baseline = baseline_of(_simulators(metrics))
    baseline_high = _get(metrics, baseline, "perplexity", "value_ci_high") if baseline else None
    later = _simulators(metrics)[_simulators(metrics).index(baseline) + 1 :] if baseline else []
    rows, flagged = [], []
    for n in names:
        found = _get(metrics, n, "perplexity")
        low = found.get("value_ci_low")
        above = n in later and baseline_high is not None and low is not None and low > baseline_high
        if above:
            flagged.append(n)
        rows.append([n, _with_interval(found, "value", "f2"), _fmt(found.get("n_turns"), "int"),
                     _fmt(found.get("n_tokens"), "int"), _fmt(found.get("n_sessions"), "int"),
                     f"⚠ above {baseline}" if above else ""])
    turns = {_get(metrics, n, "perplexity", "max_user_turns") for n in names} - {None}
    which = f"each session's first {turns.pop()} user turns" if len(turns) == 1 else "their user turns"
    lines = ["## Held-out perplexity of real user messages", "",
             _table(["simulator", "perplexity [95% CI]", "user turns", "tokens", "sessions", "flag"], rows), "",
             f"The perplexity of the real user messages of held-out sessions ({which}) under each simulator, "
             "teacher-forced on the prompt it sees when simulating. Lower = the simulator finds real users more "
             f"predictable. DIAL iterations must not blow it up: ⚠ marks one whose interval lies entirely above {baseline}'s.", ""]
    if flagged:
        lines += [f"**{', '.join(flagged)}: real users became less predictable than under {baseline}.**", ""]
    return lines


def _truncation_lines(metrics: dict) -> list[str]:
    rows = []
    for n in _simulators(metrics):
        truncation = _get(metrics, n, "truncation")
        if not truncation:
            continue
        sides = ([("user", truncation["user"])] if truncation.get("user") else []) + [
            (f"chatbot {c}", v) for c, v in sorted((truncation.get("chatbots") or {}).items())
        ]
        for side, entry in sides:
            rows.append([n, side, f"{_fmt(entry.get('truncated'), 'int')} / {_fmt(entry.get('messages'), 'int')}",
                         _with_interval(entry, "share", "pct"), _fmt(entry.get("trimmed"), "int") if "trimmed" in entry else "—"])
    if not rows:
        return []
    return ["## Messages cut at the token cap", "",
            _table(["simulator", "messages of", "cut / messages", "share [95% CI]", "user turns trimmed to a sentence end"], rows), "",
            "Messages that hit simulate's max_new_tokens end mid-sentence, which a discriminator can see. A user turn that "
            "hits it is trimmed to its last complete sentence (counted in the last column); only one with no sentence end "
            "stays cut.", ""]


def _structure_lines(metrics: dict) -> list[str]:
    """Real vs each simulator: how sessions are shaped (dial.evaluation.structure), with intervals."""
    order = metrics["order"]
    if not any(_get(metrics, n, "structure") for n in order):
        return []
    rows = []
    for n in order:
        found = _get(metrics, n, "structure")
        if not found:
            continue
        rows.append([n, _fmt(found.get("n_sessions"), "int"), _with_interval(found, "messages_per_user_turn", "f2"),
                     _with_interval(found, "burst_turn_share", "pct1"), _with_interval(found, "words_per_user_message", "f1"),
                     _with_interval(found, "tagged_message_share", "pct1"), _with_interval(found, "user_turns_per_session", "f2"),
                     f"{_fmt(found.get('user_ended'), 'int')} — {_with_interval(found, 'user_ended_share', 'pct1')}"])
    turns = metrics.get("settings", {}).get("max_user_turns")
    within = f"within {turns} user turns" if turns else "in the session"
    return ["## Session structure: real vs simulated", "",
            _table(["group", "sessions", "messages / user turn", "burst turns %", "words / user message",
                    "messages with chat markup %", "user turns / session", f"user ended {within} (n — %)"], rows), "",
            "A user turn is what the user writes before the chatbot answers (one message, or a burst of several). "
            "Sessions cut as in the other tables; intervals: 95% bootstrap over sessions, Wilson for the ended share. "
            "A real session counts as ended when its user left within the compared turns; a simulated one when "
            "the simulator wrote the end marker. Chat markup: \"<|\", \"</|\" or \"|>\" in a user message "
            "(an invented tag such as \"<|reply|>\"; markers are read before this count), which no real user types. "
            "Whatever differs here, a discriminator can use without reading a word (markup: at a glance).", ""]


def render_markdown(metrics: dict, figures: Mapping[str, str], category_simulator: str | None = None) -> str:
    order, simulators = metrics["order"], _simulators(metrics)
    sentence, verdict_header, verdict_rows = verdict(metrics)
    underpowered = power_sentence(metrics)
    lines = ["# DIAL evaluation", ""]
    if underpowered:
        lines += [underpowered, ""]
    lines += [
        "Real users vs every simulator (zero-shot, SFT, DIAL iterations). Lower discriminator accuracy (50% is",
        "ideal), values closer to the real users' row, lower KL and BCE, and higher termination F1 mean a more",
        "realistic simulator. \"—\" = not available (missing input or undefined); [low, high] = 95% interval.",
        "",
    ]
    lines += _perplexity_lines(metrics)
    lines += _truncation_lines(metrics)
    lines += _structure_lines(metrics)
    lines += ["## Did DIAL make the simulator more real?", ""]
    if not underpowered:
        lines += [sentence, ""]
    if verdict_rows:
        lines += [_table(verdict_header, verdict_rows), ""]
        lines += ["Distances to the target are shown, not raw values; Δ = simulator − baseline with its 95% bootstrap",
                  "interval. ✓ closer to real than the baseline, ✗ further: only where the interval excludes 0;",
                  "otherwise \"not significant\". n = sessions (or messages) each side rests on.", ""]

    lines += ["## Sessions", ""]
    lines.append(_table(
        ["group", "sessions", "user messages", "chatbot messages", "words / session", "judged sessions"],
        [[n, _fmt(_get(metrics, n, "n_sessions"), "int"), _fmt(_get(metrics, n, "n_user_messages"), "int"),
          _fmt(_get(metrics, n, "n_chatbot_messages"), "int"), _fmt(_get(metrics, n, "lexical", "n_words_mean"), "f1"),
          _fmt(_get(metrics, n, "issues", "n_sessions_judged"), "int")] for n in order],
    ))
    turns = metrics.get("settings", {}).get("max_user_turns")
    lines += ["", f"Real and simulated sessions were both cut after {turns} user turns (and the chatbot reply that follows) "
              "before judging and measuring; the counts above are after the cut. The termination probe reads whole "
              "real sessions." if turns else "", ""]

    lines += ["## Linguistic diversity (paper table 1) and UserLM realism", ""]
    lines.append(_table(
        ["group", "entropy (bits)", "TTR", "bigram", "first-turn diversity", "intent overlap"],
        [[n]
         + [f"{_with_interval(_get(metrics, n, 'lexical'), f'{m}_mean')} ± {_fmt(_get(metrics, n, 'lexical', f'{m}_std'), 'f3')}"
            if _get(metrics, n, "lexical", f"{m}_mean") is not None else MISSING for m in LEXICAL_METRICS]
         + [_fmt(_get(metrics, n, "first_turn_diversity", "value"), "pct"),
            _with_interval(_get(metrics, n, "intent_decomposition"), "value", "pct")] for n in order],
    ))
    lines += ["", "Mean [95% bootstrap interval over sessions] ± sample std across sessions; median in metrics.json.",
              "Paper (real users): 6.60 / 0.483 / 0.861. First-turn diversity has no interval (a share of distinct",
              "words: resampling repeats sessions and deflates it).", ""]
    reference = _get(metrics, "real", "intent_decomposition", "reference")
    if reference:
        lines += [f"Intent overlap is measured against the {reference}: the current-session summary is built from the",
                  "real user's own words of that session, so against it real users would overlap by construction.", ""]
    if "lexical" in figures:
        lines += [f"![lexical metrics]({figures['lexical']})", ""]

    lines += ["## Discriminator (paper table 2)", ""]
    header = ["discriminator"] + [f"{t.replace('_', ' ')} {m}" for t in DISCRIMINATOR_TURNS for m in ("acc", "F1", "MCC")]
    structure = any(_get(metrics, n, "discriminator", "structure_baseline") for n in order)
    balanced = any(_get(metrics, n, "discriminator", "overall", "balanced_accuracy") is not None for n in order)
    header += (["overall balanced acc"] if balanced else []) + ["n (messages)"] + (["structure-only acc"] if structure else [])
    lines.append(_table(
        header,
        [[n] + [_discriminator_cell(metrics, n, t, m) for t in DISCRIMINATOR_TURNS for m in ("accuracy", "f1", "mcc")]
         + ([_with_interval(_get(metrics, n, "discriminator", "overall"), "balanced_accuracy", "pct1")] if balanced else [])
         + [_fmt(_get(metrics, n, "discriminator", "overall", "n"), "int")]
         + ([_with_interval(_get(metrics, n, "discriminator", "structure_baseline"), "accuracy", "pct1")] if structure else [])
         for n in order],
    ))
    limit = metrics.get("settings", {}).get("simulated_user_turns")
    lines += ["", "In % (MCC × 100), on held-out sessions; a discriminator per simulator, trained identically. Accuracy",
              "[95% Wilson interval over the held-out user messages]."
              + (f" Simulated sessions have at most {limit} user turns: later turns are \"{NOT_SIMULATED}\"." if limit else ""),
              ""]
    if any(_get(metrics, n, "discriminator", "overall", "n_effective") is not None for n in order):
        lines += ["Each held-out real session is paired with every simulation of its context (one per chatbot) and weighs",
                  "as many in acc, F1 and MCC; the Wilson interval uses the effective sample size (Kish) of those weights.", ""]
    if balanced:
        lines += ["Balanced acc: the mean of the accuracy on real and on simulated messages [95% bootstrap over sessions,",
                  "each class on its own]. A constant guess scores 50% on it; plain accuracy rewards always guessing the",
                  "class with more messages (a simulator whose users write fewer messages than the real ones).", ""]
    if structure:
        lines += ["Structure-only acc: a logistic regression on structural features only, on the same held-out sessions.", ""]
    explained = structure_sentence(metrics)
    if explained:
        lines += [explained, ""]
    if "discriminator" in figures:
        lines += [f"![discriminator accuracy]({figures['discriminator']})", ""]

    lines += ["## Issues (paper figure 2, table 3)", ""]
    aggregate = metrics.get("aggregate")
    issue_rows = [_issue_row(n, metrics["groups"][n], n == "real") for n in order]
    if aggregate:
        issue_rows.append(_issue_row(_aggregate_label(aggregate), aggregate, False))
    lines.append(_table(
        ["group", "issue rate [95% CI]", "± SE", "flagged / chatbot messages", "judged sessions", "KL(real‖sim) [95% CI]",
         "raw KL (support; categories missed)", "r (real vs sim, per chatbot)", "p"],
        issue_rows,
    ))
    why = sorted({_get(metrics, n, "predictive_validity", "why") for n in simulators} - {None})
    lines += [""] + [f"Predictive validity not applicable: {w}." for w in why] + [""]
    if aggregate:
        lines += [f"{_aggregate_label(aggregate)}: the sessions of {', '.join(aggregate['simulators'])} pooled "
                  f"({aggregate['n_sessions']} sessions; paper table 3 \"Aggregate\"); its rate is Σ flagged / Σ chatbot "
                  "messages over them, its intervals a bootstrap over the pooled sessions.", ""]
    smoothing = metrics.get("settings", {}).get("kl_smoothing")
    lines += ["Issue rate interval: bootstrap over sessions (messages of one session are not independent). KL in nats",
              f"over issue-category shares, each side smoothed with {smoothing} pseudo-count(s) in total spread over the",
              f"{_fmt(metrics.get('judge', {}).get('n_issue_categories'), 'int')} categories (they weigh like {smoothing} flagged message(s), never more than",
              "the data); raw KL over the real users' categories, infinite (—) when the simulator misses one of them.", ""]
    if "issue_rates" in figures:
        lines += [f"![issue rates]({figures['issue_rates']})", ""]
    if "issue_category_deltas" in figures:
        lines += [f"Issue-category discrepancy of {category_simulator} (paper figure 4):", "",
                  f"![issue category deltas]({figures['issue_category_deltas']})", ""]

    lines += _simulator_error_lines(metrics)
    lines += _goal_lines(metrics)
    lines += _run_spread_lines(metrics)

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
    ab_groups = [(n, _get(metrics, n, "ab")) for n in simulators]
    if aggregate:
        ab_groups.append((_aggregate_label(aggregate), aggregate.get("ab")))
    for n, found in ab_groups:
        for pair, result in sorted((found or {}).items()):
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
            f"{side}: {r[side]['why']}" for _, found in ab_groups for r in (found or {}).values()
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
    lines += _embedding_lines(metrics, figures)
    judge = metrics.get("judge", {})
    if judge.get("n_judged_sessions_outside_groups"):
        lines += [f"Judged sessions outside every group (not counted): {judge['n_judged_sessions_outside_groups']}.", ""]
    return "\n".join(line for line in _squeeze(lines)) + "\n"


def _embedding_lines(metrics: dict, figures: Mapping[str, str]) -> list[str]:
    """Real vs simulated sessions in embedding space: the t-SNE picture and, beside it, each
    simulator's classifier two-sample test (`<simulator>.embeddings`, dial.evaluation.embeddings)."""
    status = str(metrics.get("settings", {}).get("tsne", "off"))
    title = ["## Real vs simulated sessions in embedding space (appendix B.1)", ""]
    if status.startswith("skipped"):
        return title + [f"t-SNE picture and two-sample test {status}.", ""]
    tested = [name for name in _simulators(metrics) if _get(metrics, name, "embeddings")]
    if "tsne" not in figures and not tested:
        return []
    lines = list(title)
    if "tsne" in figures:
        lines += [f"![t-SNE of session embeddings]({figures['tsne']})", "",
                  "Sentence embeddings of each session's user messages (all-MiniLM-L6-v2), t-SNE to 2-D: overlapping",
                  "clouds mean the simulated users write like the real ones.", ""]
    if tested:
        lines.append(_table(
            ["simulator", "real vs simulated: held-out balanced accuracy [95% CI]", "permutation p", "n real", "n simulated"],
            [[name, _with_interval(_get(metrics, name, "embeddings"), "c2st_balanced_accuracy", "pct"),
              _fmt(_get(metrics, name, "embeddings", "c2st_p_value"), "p"),
              _fmt(_get(metrics, name, "embeddings", "n_real"), "int"), _fmt(_get(metrics, name, "embeddings", "n_simulated"), "int")]
             for name in tested],
        ))
        lines += ["", "How far apart the clouds are: a logistic regression on the same embeddings tells each simulator's",
                  "sessions from the real ones, each session predicted by a classifier that never saw it (stratified k-fold, k ≤ 5;",
                  "classes weighted, not subsampled). 50 % = indistinguishable (under 50 % is chance too), 100 % = no overlap.",
                  "Interval: bootstrap over sessions, given the fitted classifiers (somewhat narrow). Permutation p: the",
                  "share of random relabellings (the whole cross-validation rerun) that score at least as high; exact at",
                  "any n, so read it beside the interval (p < 0.05: the simulator's sessions are told apart).", ""]
    return lines


def _aggregate_label(aggregate: dict) -> str:
    return f"aggregate ({' + '.join(aggregate['simulators'])})"


def _issue_row(label: str, group: dict, is_real: bool) -> list[str]:
    """One row of the issues table, from a group's metrics (or the aggregate's)."""
    issues = group.get("issues")
    validity = group.get("predictive_validity") or {}
    return [
        label, _with_interval(issues, "rate", "pct"), _fmt((issues or {}).get("se"), "pct"),
        f"{_fmt(issues.get('k'), 'int')} / {_fmt(issues.get('n'), 'int')}" if issues else MISSING,
        _fmt((issues or {}).get("n_sessions_judged"), "int"),
        MISSING if is_real else _with_interval(issues, "kl_from_real"),
        MISSING if is_real else _raw_kl((issues or {}).get("kl_unsmoothed")),
        _fmt(validity.get("r"), "f3"), _fmt(validity.get("p"), "p"),
    ]


def _simulator_error_lines(metrics: dict) -> list[str]:
    """Simulator errors per group (dial.evaluation.simulator_errors), the real users' row being the
    rules' false-positive floor, and the issue rate without the sessions the simulator broke."""
    order = metrics["order"]
    if not any(_get(metrics, n, "simulator_errors") for n in order):
        return []
    rows = []
    for n in order:
        found = _get(metrics, n, "simulator_errors")
        if not found:
            continue
        by_message, by_session = found.get("messages_by_flag", {}), found.get("sessions_by_flag", {})
        clean = _get(metrics, n, "issues", "without_simulator_errors")
        rows.append([
            "real (control)" if n == "real" else n,
            f"{_with_interval(found, 'rate', 'pct')} ({_fmt(found.get('k'), 'int')} / {_fmt(found.get('n'), 'int')})",
            f"{_with_interval(found, 'session_rate', 'pct')} ({_fmt(found.get('sessions_flagged'), 'int')} / "
            f"{_fmt(found.get('n_sessions'), 'int')})",
            _fmt(by_message.get("role_break"), "int"), _fmt(by_message.get("verbatim_context"), "int"),
            _fmt(by_message.get("contradicts_profile"), "int"), _fmt(by_session.get("ended_mid_task"), "int"),
            f"{_with_interval(_get(metrics, n, 'issues'), 'rate', 'pct')} (n {_fmt(_get(metrics, n, 'issues', 'n'), 'int')})"
            if _get(metrics, n, "issues") else MISSING,
            f"{_with_interval(clean, 'rate', 'pct')} (n {_fmt(clean.get('n'), 'int')}; {clean.get('n_sessions_excluded')} sessions out)"
            if clean else MISSING,
        ])
    missing_context = sum(_get(metrics, n, "simulator_errors", "n_sessions_without_context") or 0 for n in order)
    lines = ["## Simulator errors (role adherence)", "",
             _table(["group", "user messages flagged [95% CI] (k / n)", "sessions flagged [95% CI] (k / n)",
                     "role break (messages)", "context copied (messages)", "contradicts profile (messages)",
                     "ended mid-task (sessions)", "chatbot issue rate [95% CI]", "issue rate without flagged sessions [95% CI]"],
                    rows), "",
             "A simulator error is what a simulated user should never do: speak as the assistant, talk about its "
             "instructions or the simulation, leak chat markup (role break), copy 8+ consecutive words of its context, "
             "state a name / age / gender its profile contradicts, or end the session in its first turn or right after "
             "the chatbot asked a question (dial.evaluation.simulator_errors). The real users' row runs the same rules "
             "on the real sessions: what they flag there is the rules' false-positive floor, and a simulator's rate "
             "means something only above it. The last column is the chatbot's issue rate without the sessions that have "
             "any flag: where it differs from the one before, part of the chatbot's issues answer a broken simulated user. "
             "Message share: 95% bootstrap over sessions; session share: Wilson; n = chatbot messages for the issue rates.", ""]
    if missing_context:
        lines += [f"{missing_context} session(s) had no context to compare with (no copy or profile check there).", ""]
    return lines


GOAL_CATEGORY_LABELS = {
    "task_objective": "task objectives", "user_profile": "profile facts", "emotional_state": "emotional state",
    "preference": "preferences", "user_policy": "policies",
}


def _goal_lines(metrics: dict) -> list[str]:
    """Goal alignment per group (dial.evaluation.goals, UGST), the real users' row as the control."""
    order = metrics["order"]
    found = {n: _get(metrics, n, "goals") for n in order if _get(metrics, n, "goals")}
    if not found:
        return []
    categories = [c for c in GOAL_CATEGORY_LABELS if any(c in (g.get("categories") or {}) for g in found.values())]
    rows = []
    for n, entry in found.items():
        row = ["real (control)" if n == "real" else n,
               f"{_with_interval(entry, 'rate', 'pct')} (n {_fmt(entry.get('n_sessions'), 'int')} sessions)"]
        for category in categories:
            cell = (entry.get("categories") or {}).get(category)
            row.append(f"{_with_interval(cell, 'rate', 'pct')} ({cell['k']} / {cell['n']})" if cell else MISSING)
        row.append(_fmt(entry.get("n_sessions_without_goal"), "int"))
        rows.append(row)
    trackers = sorted({str(entry.get("tracker")) for entry in found.values()})
    return ["## Goal alignment (UGST)", "",
            _table(["group", "goal alignment [95% CI] (n)"] + [f"{GOAL_CATEGORY_LABELS[c]} [95% CI] (k / n)" for c in categories]
                   + ["sessions without a goal"], rows), "",
            "Each session's goal is the context of the real session that grounds it (profile, current-session summary), "
            "decomposed into sub-components; after every user turn each gets a status (UGST: a task objective goes "
            "incomplete → attempted → complete; a profile fact or policy stays aligned unless contradicted; an emotional "
            "state or preference is aligned once expressed). Goal alignment: the share of a session's sub-components that "
            "succeeded in its final state (objectives attempted or complete, the others aligned), mean over sessions "
            "[95% bootstrap over sessions]; per category, the share of its sub-components over all sessions (k / n "
            f"sub-components) [bootstrap over sessions]. Tracked by {', '.join(trackers)} (dial.evaluation.goals). "
            "The real users' row runs the same tracker against their own contexts: their summary was written from their "
            "own session, so it is the reference a simulator should reach, not a bar to beat."
            + (" The rules read only the user's words: a topic in other words, a feeling without a listed mood word, or a "
               "contradicted profile fact other than a stated name, age or gender goes unseen." if "rules" in trackers else ""),
            ""]


def _run_spread_lines(metrics: dict) -> list[str]:
    """The run-to-run spread of each chatbot's issue rate (dial.evaluation.seed_variance)."""
    rows, why = [], set()
    for n in _simulators(metrics):
        for chatbot, entry in sorted((_get(metrics, n, "issues", "run_spread") or {}).items()):
            if not entry.get("applicable"):
                why.add(str(entry.get("why")))
                continue
            runs = "; ".join(f"{run}: {_fmt(r['rate'], 'pct')} ({r['k']} / {r['n']})" for run, r in entry["runs"].items())
            std = _with_interval({k: None if v is None else 100 * v for k, v in entry.items() if k.startswith("std")}, "std", "f2")
            rows.append([n, chatbot, f"{entry['n_runs']} × {entry['n_contexts']}", runs,
                         f"{_fmt(entry.get('min'), 'pct')} – {_fmt(entry.get('max'), 'pct')}", f"{std} pp"])
    if not rows and not why:
        return []
    lines = ["## Run-to-run spread of the issue rate (simulate.n_simulations)", ""]
    if rows:
        lines += [_table(["simulator", "chatbot", "runs × contexts", "issue rate per run (flagged / chatbot messages)",
                          "min – max", "std across runs [95% CI]"], rows), "",
                  "Run j: every context's j-th simulation against that chatbot (simulation_index j, its own seed). Std: "
                  "sample standard deviation of the run rates, in percentage points [95% bootstrap over contexts, each "
                  "with all its runs]. A difference between two chatbots smaller than this spread could be a re-run's.", ""]
    lines += [f"{reason[0].upper()}{reason[1:]}." for reason in sorted(why)] + ([""] if why else [])
    return lines


def _raw_kl(found: dict | None) -> str:
    if not found:
        return MISSING
    return f"{_fmt(found.get('value'), 'f3')} ({found.get('support')}; {found.get('sim_missing')})"


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
