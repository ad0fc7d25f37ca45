"""Benchmark: how precise the judges are on real chats, against hand labels.

    python bench/judge_bench.py                  # the rules judge on the labelled set (~5 s, one core)
    python bench/judge_bench.py --openai         # also the `openai` judge (judge.openai in params.yaml)
    python bench/judge_bench.py --draw 4 --detectors incomplete_message,user_confused --per-detector 5 \
        --out /tmp/candidates.jsonl              # draw more messages to label (reads both corpora, ~1 min)
    python bench/judge_bench.py --draw 4 --detectors enabled --per-detector 5 --unflagged 25 --seed 20261207 \
        --out /tmp/heldout.jsonl                 # how the held-out set was drawn (docs/judges.md)
    python bench/judge_bench.py --draw 5 --detectors enabled --per-detector 5 --unflagged 25 --seed 20261208 \
        --out /tmp/heldout2.jsonl                # the fresh held-out draw of round 5 (excludes every labelled file)
    python bench/judge_bench.py --draw 6 --detectors enabled --per-detector 15 --unflagged 20 --seed 20261209 \
        --out /tmp/round6_candidates.jsonl       # round 6, the larger fresh draw (add --heldout-labels with the
                                                 # round-4 and round-5 files only to reproduce it: by default the
                                                 # draw now also excludes round 6 itself)
    python bench/judge_bench.py --heldout --firing-rates   # the held-out draws, second raters, firing rates (~1 min)

The labelled set (`tests/fixtures/judge_labels.jsonl`, `dial.evaluation.judges.labelled`;
docs/judges.md says how it was drawn and labelled) holds assistant-side messages of real chats:
chitchat (the `chitchat-dataset` package) and ESConv, read in place from ../shared/datasets/esconv
beside the repository (none of its text is in the repository, and this script prints none).

The judges read each whole session (detectors look at the user's reaction and at the chatbot's
other messages) and their verdicts on the labelled turns are compared with the labels:

1. per rules detector, all registered ones, also those the shipped taxonomy switches off: its flags
   on the labelled messages, precision (flags whose message has the detector's category) and recall
   (labelled messages of that category it flags), with 95 % Wilson intervals and n; and the
   precision on the messages drawn from its flags after its last change (the set's latest round that
   drew for it: out of sample for that version unless docs/judges.md says otherwise);
2. per issue category, the judge as configured (taxonomy.yaml): precision and recall;
3. message level: of the messages the judge flags, the share with at least one correct category.

The set over-samples flagged messages (that is what makes precision measurable), so recall here is
an upper bound of recall on a random sample of messages, and precision depends on the corpus: a
chatbot that really cuts its messages makes "Incomplete message" flags more often right.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from dial.data.chitchat import read_chitchat
from dial.data.esconv import read_esconv
from dial.evaluation.judges import JudgeInput, build_judge
from dial.evaluation.judges.labelled import (UNFLAGGED, LabelledMessage, load_labelled_messages, load_second_rater,
                                             read_sessions)
from dial.evaluation.judges.rules import ISSUE_DETECTORS, OFF_BY_DEFAULT
from dial.evaluation.stats import wilson_interval
from dial.evaluation.taxonomy import load_taxonomy
from dial.params import DataParams, load_params

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "tests" / "fixtures" / "judge_labels.jsonl"
ESCONV = REPO.parent / "shared" / "datasets" / "esconv"
HELDOUT = REPO / "tests" / "fixtures" / "judge_labels_heldout.jsonl"  # round 4 (seed 20261207)
HELDOUT2 = REPO / "tests" / "fixtures" / "judge_labels_heldout2.jsonl"  # round 5 (seed 20261208), after the detectors it informed changed
HELDOUT3 = REPO / "tests" / "fixtures" / "judge_labels_heldout3.jsonl"  # round 6 (seed 20261209), same detectors as round 5, 15 per stratum
POOLED_ROUNDS = (5, 6)  # the held-out rounds drawn with the current detectors (changed after round 4): pooled message-level precision
SECOND_RATER = REPO / "tests" / "fixtures" / "judge_labels_second_rater.jsonl"  # 60 messages of the design set
SECOND_RATER_ROUND5 = REPO / "tests" / "fixtures" / "judge_labels_second_rater_round5.jsonl"  # all of round 5


# --- formatting ---------------------------------------------------------------------------------


def ratio(k: int, n: int) -> str:
    """k/n as a rate with its 95 % Wilson interval, e.g. `0.75 [0.57, 0.87] (18/24)`; `—` for n = 0."""
    interval = wilson_interval(k, n)
    if interval is None:
        return "— (0/0)"
    return f"{k / n:.2f} [{interval[0]:.2f}, {interval[1]:.2f}] ({k}/{n})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- the judges' verdicts on the labelled turns -------------------------------------------------


Key = tuple[str, str, int]  # (source, session_id, turn_index) of a labelled message


def judge_verdicts(judge, sessions: dict, labelled: list[LabelledMessage]) -> tuple[dict[Key, set[str]], dict[str, set[Key]]]:
    """What a judge reports on each labelled message (whole sessions judged): its issue categories,
    and for the rules judge which detector flagged which message (the evidence starts with it)."""
    items = [JudgeInput(f"{source}:{sid}", sessions[(source, sid)]) for source, sid in sorted(sessions)]
    issues, _ = judge.annotate(items, progress=False)
    categories: dict[Key, set[str]] = {(row.source, row.session_id, row.turn_index): set() for row in labelled}
    flags: dict[str, set[Key]] = defaultdict(set)
    for item_id, turn, category, evidence in zip(issues["item_id"], issues["turn_index"], issues["category"], issues["evidence"]):
        source, sid = item_id.split(":", 1)
        key = (source, sid, int(turn))
        if key in categories:
            categories[key].add(category)
            flags[evidence.split(":", 1)[0]].add(key)
    return categories, flags


def switched_off_flags(sessions: dict, labelled: list[LabelledMessage]) -> dict[str, set[Key]]:
    """The labelled messages each detector the shipped taxonomy leaves off would flag."""
    wanted = {(row.source, row.session_id, row.turn_index) for row in labelled}
    return {name: {(source, sid, turn) for (source, sid), messages in sessions.items()
                   for turn, _ in ISSUE_DETECTORS[name](messages) if (source, sid, turn) in wanted}
            for name in OFF_BY_DEFAULT}


# --- the tables ---------------------------------------------------------------------------------


def detector_table(flags: dict[str, set[Key]], labelled: list[LabelledMessage], category_of: dict[str, str]) -> str:
    labels = {(row.source, row.session_id, row.turn_index): row.categories for row in labelled}
    rows = []
    for name in sorted(ISSUE_DETECTORS):
        category = category_of.get(name, "—")
        flagged = flags[name]
        correct = sum(1 for key in flagged if category in labels[key])
        positives = [key for key, categories in labels.items() if category in categories]
        caught = sum(1 for key in positives if key in flagged)
        # The latest round that drew from this detector's flags measures its current version.
        drawn = [row for row in labelled if row.drawn_as == name]
        latest = max((row.round for row in drawn), default=None)
        latest_rows = [(row.source, row.session_id, row.turn_index) for row in drawn if row.round == latest]
        latest_flagged = [key for key in latest_rows if key in flagged]
        latest_text = "—" if latest is None else f"r{latest}: {sum(1 for k in latest_flagged if category in labels[k])}/{len(latest_flagged)}"
        rows.append([f"`{name}`", category, "off" if name in OFF_BY_DEFAULT else "on",
                     ratio(correct, len(flagged)), ratio(caught, len(positives)), latest_text])
    return table(["detector", "category", "default", "precision (n = flags)", "recall (n = labelled)", "latest draw"], rows)


def category_table(verdicts: dict, labelled: list[LabelledMessage], categories: list[str]) -> str:
    labels = {(row.source, row.session_id, row.turn_index): row.categories for row in labelled}
    rows = []
    for category in categories:
        flagged = [key for key, found in verdicts.items() if category in found]
        positives = [key for key, found in labels.items() if category in found]
        if not flagged and not positives:
            continue
        correct = sum(1 for key in flagged if category in labels[key])
        caught = sum(1 for key in positives if category in verdicts[key])
        rows.append([category, ratio(correct, len(flagged)), ratio(caught, len(positives))])
    return table(["category", "precision (n = flagged)", "recall (n = labelled)"], rows)


def message_level(verdicts: dict, labelled: list[LabelledMessage], covered: set[str]) -> str:
    labels = {(row.source, row.session_id, row.turn_index): row.categories for row in labelled}
    flagged = [key for key, found in verdicts.items() if found]
    right = sum(1 for key in flagged if verdicts[key] & labels[key])
    with_issue = [key for key, found in labels.items() if found]
    with_covered_issue = [key for key in with_issue if labels[key] & covered]
    return (f"message-level precision {ratio(right, len(flagged))}; recall {ratio(sum(1 for k in with_issue if verdicts[k] & labels[k]), len(with_issue))}"
            f" over all labelled issues, {ratio(sum(1 for k in with_covered_issue if verdicts[k] & labels[k]), len(with_covered_issue))}"
            f" over the categories it covers")


# --- drawing more messages to label -------------------------------------------------------------


def draw(round_number: int, detectors: list[str], per_detector: int, labelled: list[LabelledMessage], esconv_dir: Path,
         seed: int, unflagged: int = 0, enabled: list[str] | None = None) -> list[dict]:
    """Messages flagged by `detectors` (as they are now) that the set does not hold yet: up to
    `per_detector` per detector and corpus, drawn with a seed per (corpus, detector, round).

    With `unflagged` (the held-out draw): the strata partition the corpus's assistant messages, a
    message's stratum being the first of `detectors` (sorted) that flags it, or `unflagged` when no
    `enabled` detector does, of which `unflagged` per corpus are drawn; each row records its
    stratum's size in the corpus (`stratum_size`), so that a population estimate can weight them."""
    taken = {(row.source, row.session_id, row.turn_index) for row in labelled}
    drawn = []
    for source, sessions in real_sessions(esconv_dir).items():
        flags = {name: {(sid, turn) for sid in sorted(sessions) for turn, _ in ISSUE_DETECTORS[name](sessions[sid])}
                 for name in sorted(set(detectors) | (set(enabled or []) if unflagged else set()))}
        if unflagged:
            any_flag = set().union(*(flags[name] for name in enabled or detectors))
            strata: dict[str, set] = {}
            seen: set = set()
            for name in sorted(detectors):
                strata[name] = flags[name] - seen
                seen |= flags[name]
            strata[UNFLAGGED] = {(sid, turn) for sid, messages in sessions.items()
                                 for turn, role, _ in messages if role == "assistant"} - any_flag
        else:
            strata = {name: flags[name] for name in detectors}
        for name, members in strata.items():
            pool = sorted(key for key in members if (source, *key) not in taken)
            rng = random.Random(f"{seed}-{source}-{name}-round{round_number}")
            for sid, turn in rng.sample(pool, min(unflagged if name == UNFLAGGED else per_detector, len(pool))):
                taken.add((source, sid, turn))
                row = {"source": source, "session_id": sid, "turn_index": turn, "round": round_number, "drawn_as": name}
                if unflagged:
                    row["stratum_size"] = len(members)
                drawn.append(row)
    return drawn


def real_sessions(esconv_dir: Path) -> dict[str, dict[str, list]]:
    """Every session of both corpora, read in place: {source: {session_id: [(turn, role, text)]}}."""
    corpora = {"chitchat": read_chitchat(DataParams(source="chitchat"), progress=False),
               "esconv": read_esconv(DataParams(source="esconv", path=str(esconv_dir)), progress=False)}
    return {source: {row.session.session_id: [(i, m.role, m.text) for i, m in enumerate(row.session.messages)]
                     for row in rows if row.session is not None}
            for source, rows in corpora.items()}


# --- the held-out check, the second rater, firing rates -----------------------------------------


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no verdicts on the same items; None when undefined."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def agreement_report(first: list[LabelledMessage], second: list[tuple[str, str, int, frozenset[str]]],
                     set_name: str = "the design set", first_name: str = "design") -> str:
    """Per message, any issue vs none: Cohen's kappa, raw agreement, and the disagreements (ids and
    category names only) between a labelled file's rater (`first_name`) and a second rater."""
    stored = {(row.source, row.session_id, row.turn_index): row.categories for row in first}
    pairs = [(key, stored[key], labels) for *key_parts, labels in second for key in [tuple(key_parts)] if key in stored]
    a = [bool(x) for _, x, _ in pairs]
    b = [bool(y) for _, _, y in pairs]
    kappa = cohen_kappa(a, b)
    same = sum(x == y for x, y in zip(a, b))
    exact = sum(x == y for _, x, y in pairs)
    lines = [f"second rater: {len(pairs)} messages of {set_name} relabelled blind; any issue vs none: "
             f"Cohen's kappa {'—' if kappa is None else f'{kappa:.2f}'} (n = {len(pairs)}), raw agreement {ratio(same, len(pairs))}; "
             f"{first_name} rater {sum(a)} with an issue, second rater {sum(b)}; same category set {ratio(exact, len(pairs))}"]
    for key, x, y in pairs:
        if bool(x) != bool(y):
            lines.append(f"  differ: {key[0]} {key[1]} turn {key[2]}: {first_name} {sorted(x) or 'none'} / second {sorted(y) or 'none'}")
    for key, x, y in pairs:
        if bool(x) == bool(y) and x != y:
            lines.append(f"  other categories: {key[0]} {key[1]} turn {key[2]}: {first_name} {sorted(x)} / second {sorted(y)}")
    return "\n".join(lines)


def relabelled(labelled: list[LabelledMessage], second: list[tuple[str, str, int, frozenset[str]]]) -> list[LabelledMessage]:
    """The rows a second rater labelled, with the second rater's categories in place of the file's
    (how drawn and the stratum sizes kept), so that message_level and stratified_precision measure
    the judge against the second rater."""
    theirs = {(source, sid, turn): categories for source, sid, turn, categories in second}
    return [replace(row, categories=theirs[key]) for row in labelled
            for key in [(row.source, row.session_id, row.turn_index)] if key in theirs]


def stratified_precision(verdicts: dict, labelled: list[LabelledMessage], seed: int = 0, resamples: int = 2000) -> str:
    """Message-level precision over the population of flagged messages: each drawn stratum's
    precision weighted by its size in its corpus (rows' `stratum_size`), with a seeded bootstrap
    95 % interval (resampling within strata; too narrow where a stratum's few draws all agree) and
    the weighted per-stratum Wilson bounds (conservative); and each stratum's k/n and size."""
    strata: dict[tuple[str, str], list[bool]] = defaultdict(list)
    sizes: dict[tuple[str, str], int] = {}
    for row in labelled:
        key = (row.source, row.session_id, row.turn_index)
        if row.drawn_as == UNFLAGGED or not verdicts[key] or row.stratum_size is None:
            continue
        strata[(row.source, row.drawn_as)].append(bool(verdicts[key] & row.categories))
        sizes[(row.source, row.drawn_as)] = row.stratum_size
    if not strata:
        return "—"
    total = sum(sizes[s] for s in strata)

    def estimate(groups: dict) -> float:
        return sum(sizes[s] * sum(v) / len(v) for s, v in groups.items()) / total

    rng = random.Random(seed)
    boot = sorted(estimate({s: [rng.choice(v) for _ in v] for s, v in strata.items()}) for _ in range(resamples))
    low = sum(sizes[s] * wilson_interval(sum(v), len(v))[0] for s, v in strata.items()) / total
    high = sum(sizes[s] * wilson_interval(sum(v), len(v))[1] for s, v in strata.items()) / total
    parts = ", ".join(f"{source}/{name} {sum(v)}/{len(v)} of {sizes[(source, name)]}" for (source, name), v in sorted(strata.items()))
    return (f"{estimate(strata):.2f}, bootstrap [{boot[int(0.025 * resamples)]:.2f}, {boot[int(0.975 * resamples) - 1]:.2f}], "
            f"weighted Wilson bounds [{low:.2f}, {high:.2f}] ({len(strata)} strata, n = {sum(len(v) for v in strata.values())} of "
            f"{total} flagged messages)\n  strata (right/drawn of size): {parts}")


def heldout_detector_table(verdicts: dict, flags: dict[str, set[Key]], labelled: list[LabelledMessage], category_of: dict[str, str],
                           rates: dict[str, dict[str, float]] | None) -> str:
    labels = {(row.source, row.session_id, row.turn_index): row.categories for row in labelled}
    rows = []
    for name in sorted(category_of):
        category = category_of[name]
        flagged = [key for key in flags.get(name, set()) if key in labels]
        positives = [key for key, found in labels.items() if category in found]
        if not flagged and not positives:
            continue
        correct = sum(1 for key in flagged if category in labels[key])
        caught = sum(1 for key in positives if key in flags.get(name, set()))
        row = [f"`{name}`", category, ratio(correct, len(flagged)), ratio(caught, len(positives))]
        if rates is not None:
            high = max(rates[name].values()) > 0.02
            low = bool(flagged) and correct / len(flagged) < 0.5
            row += [", ".join(f"{source} {100 * share:.2f} %" for source, share in rates[name].items()),
                    "FAILS (> 2 % and precision < 0.5)" if high and low else "ok"]
        rows.append(row)
    header = ["detector", "category", "precision (n = flags)", "recall (n = labelled)"]
    if rates is not None:
        header += ["fires on (all assistant messages)", "#14: > 2 % with precision < 0.5"]
    return table(header, rows)


def firing_rates(esconv_dir: Path, detectors: list[str]) -> tuple[dict[str, dict[str, float]], str]:
    """Per enabled detector, the share of ALL assistant-side messages of each corpus it fires on
    (ESConv: every session of the three splits; chitchat: every conversation of the package)."""
    rates: dict[str, dict[str, float]] = {name: {} for name in detectors}
    lines = []
    for source, sessions in real_sessions(esconv_dir).items():
        total = sum(1 for messages in sessions.values() for _, role, _ in messages if role == "assistant")
        anything: set = set()
        for name in detectors:
            hits = {(sid, turn) for sid, messages in sessions.items() for turn, _ in ISSUE_DETECTORS[name](messages)}
            rates[name][source] = len(hits) / total
            anything |= hits
        lines.append(f"{source}: {len(sessions)} sessions, {total} assistant messages (all of them), "
                     f"{100 * len(anything) / total:.2f} % flagged by at least one enabled detector")
    lines += [f"  `{name}` fires on more than 2 %: " + ", ".join(f"{s} {100 * r:.2f} %" for s, r in rates[name].items())
              for name in detectors if max(rates[name].values()) > 0.02]
    return rates, "\n".join(lines)


def heldout(args, params, taxonomy) -> None:
    """Each held-out file (round 4, then the fresh rounds 5 and 6 when present) on its own: none may
    share a message with the design set or with another held-out file. The round-5 second rater's
    labels (when present) are compared with the file they all belong to: agreement, and the judge's
    message-level precision with the second rater's labels as the truth. Then the rounds of
    POOLED_ROUNDS together (each message once, the held-out files' own labels)."""
    taken = {(row.source, row.session_id, row.turn_index): args.labels for row in load_labelled_messages(args.labels, taxonomy)}
    files = [path for path in args.heldout_labels if path.is_file()]
    sets = []
    for path in files:
        labelled = load_labelled_messages(path, taxonomy)
        overlap = [row for row in labelled if (row.source, row.session_id, row.turn_index) in taken]
        if overlap:
            sys.exit(f"{path}: {len(overlap)} messages are also in {taken[(overlap[0].source, overlap[0].session_id, overlap[0].turn_index)]}")
        taken.update({(row.source, row.session_id, row.turn_index): path for row in labelled})
        sets.append((path, labelled))
    category_of = {detector: label.name for label in taxonomy.categories for detector in label.detectors}
    rates = None
    if args.firing_rates:
        rates, text = firing_rates(args.esconv, sorted(category_of))
        print("## Firing rates of the enabled detectors on all real assistant-side messages\n")
        print(text + "\n")
    covered = {label.name for label in taxonomy.categories if label.detectors}
    round5 = load_second_rater(args.second_rater_round5, taxonomy) if args.second_rater_round5.is_file() else None
    pooled_verdicts: dict = {}
    pooled_rows: list[LabelledMessage] = []
    for path, labelled in sets:
        rounds = sorted({row.round for row in labelled})
        name = f"held-out draw, round {'/'.join(map(str, rounds))} ({path.name})"
        sessions = read_sessions(labelled, args.esconv)
        flagged_drawn = sum(1 for row in labelled if row.drawn_as != UNFLAGGED)
        print(f"# {name}\n\n{len(labelled)} assistant messages ({sum(r.source == 'chitchat' for r in labelled)} chitchat, "
              f"{sum(r.source == 'esconv' for r in labelled)} ESConv), {flagged_drawn} drawn from the enabled detectors' flags, "
              f"{len(labelled) - flagged_drawn} unflagged; {sum(1 for r in labelled if r.categories)} with at least one issue\n")
        with build_judge(params.judge.model_copy(update={"backend": "rules"}), taxonomy) as judge:
            verdicts, flags = judge_verdicts(judge, sessions, labelled)
        if set(rounds) <= set(POOLED_ROUNDS):
            pooled_verdicts.update(verdicts)
            pooled_rows += labelled
        print(f"## Rules detectors on the {name} (enabled ones that flag or have a labelled category)\n")
        print(heldout_detector_table(verdicts, flags, labelled, category_of, rates))
        print(f"\nrules ({name}): {message_level(verdicts, labelled, covered)}")
        print(f"rules ({name}, population-weighted over the flag strata): message-level precision {stratified_precision(verdicts, labelled)}\n")
        if round5 and {row[:3] for row in round5} <= set(verdicts):
            theirs = relabelled(labelled, round5)
            judged = {(row.source, row.session_id, row.turn_index): verdicts[(row.source, row.session_id, row.turn_index)] for row in theirs}
            print(f"## Second rater on the {name}\n")
            print(agreement_report(labelled, round5, set_name=f"the {name}", first_name="first"))
            print(f"\nrules ({name}), the second rater's labels as the truth: {message_level(judged, theirs, covered)}")
            print(f"rules ({name}), the first rater's labels as the truth: {message_level(verdicts, labelled, covered)}")
            print(f"rules ({name}), the second rater's labels, population-weighted: message-level precision "
                  f"{stratified_precision(judged, theirs)}\n")
    pooled = sorted({row.round for row in pooled_rows})
    if len(pooled) > 1:
        # the files are disjoint (checked above), so each message counts once, with its own file's labels
        name = f"held-out rounds {' + '.join(map(str, pooled))} pooled"
        print(f"# {name}\n\n{len(pooled_rows)} assistant messages, {sum(1 for r in pooled_rows if r.drawn_as != UNFLAGGED)} "
              f"drawn from the enabled detectors' flags\n")
        print(f"rules ({name}): {message_level(pooled_verdicts, pooled_rows, covered)}\n")
    if args.second_rater.is_file():
        design_rows = load_labelled_messages(args.labels, taxonomy)
        print("\n## Inter-rater agreement (design set)\n")
        print(agreement_report(design_rows, load_second_rater(args.second_rater, taxonomy)))


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--esconv", type=Path, default=ESCONV, help="ESConv split files (read in place)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--taxonomy", type=Path, default=None, help="default: judge.taxonomy of --params")
    parser.add_argument("--openai", action="store_true", help="also run the openai judge (needs judge.openai.model and a server)")
    parser.add_argument("--draw", type=int, metavar="ROUND", help="instead: draw messages to label, for this round number")
    parser.add_argument("--detectors", default="", help="--draw: comma-separated detector names")
    parser.add_argument("--per-detector", type=int, default=5, help="--draw: messages per detector and corpus")
    parser.add_argument("--out", type=Path, help="--draw: where to write the drawn rows (JSONL, no labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unflagged", type=int, default=0,
                        help="--draw: also this many unflagged messages per corpus, strata partitioned (the held-out draw)")
    parser.add_argument("--heldout", action="store_true", help="instead: the rules judge on the held-out sets, and the second raters' agreement")
    parser.add_argument("--heldout-labels", type=Path, nargs="+", default=[HELDOUT, HELDOUT2, HELDOUT3],
                        help="held-out files, each reported on its own (missing ones are skipped); --draw excludes them all")
    parser.add_argument("--second-rater", type=Path, default=SECOND_RATER, help="--heldout: a second rater's labels of design-set messages")
    parser.add_argument("--second-rater-round5", type=Path, default=SECOND_RATER_ROUND5,
                        help="--heldout: a second rater's labels of the round-5 draw (skipped when missing)")
    parser.add_argument("--firing-rates", action="store_true",
                        help="print each enabled detector's share of ALL real assistant messages (both corpora, ~1 min)")
    args = parser.parse_args()

    params = load_params(args.params)
    taxonomy = load_taxonomy(args.taxonomy or (args.params.parent / params.judge.taxonomy))
    labelled = load_labelled_messages(args.labels, taxonomy)
    if not args.esconv.is_dir():
        sys.exit(f"ESConv not found at {args.esconv} (the labelled set reads it in place)")
    if args.openai and not params.judge.openai.model:
        sys.exit("--openai: set judge.openai.model (and base_url) in params.yaml")

    enabled = sorted({detector for label in taxonomy.categories for detector in label.detectors})
    if args.heldout or (args.firing_rates and args.draw is None):
        if args.heldout:
            heldout(args, params, taxonomy)
        else:
            print(firing_rates(args.esconv, enabled)[1])
        return
    if args.draw is not None:
        detectors = enabled if args.detectors == "enabled" else [name for name in args.detectors.split(",") if name]
        unknown = [name for name in detectors if name not in ISSUE_DETECTORS]
        if not detectors or unknown or args.out is None:
            sys.exit(f"--draw needs --out and --detectors among {sorted(ISSUE_DETECTORS)} (unknown: {unknown})")
        seen = labelled + [row for path in args.heldout_labels if path.is_file() for row in load_labelled_messages(path, taxonomy)]
        rows = draw(args.draw, detectors, args.per_detector, seen, args.esconv, args.seed, args.unflagged, enabled)
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"drew {len(rows)} messages to label into {args.out}")
        return

    started = time.perf_counter()
    sessions = read_sessions(labelled, args.esconv)
    by_source = {source: sum(1 for row in labelled if row.source == source) for source in ("chitchat", "esconv")}
    with_issue = sum(1 for row in labelled if row.categories)
    print(f"labelled set: {len(labelled)} assistant messages ({by_source['chitchat']} chitchat, {by_source['esconv']} ESConv) "
          f"from {len(sessions)} sessions; {with_issue} with at least one issue, "
          f"{sum(1 for row in labelled if row.drawn_as == UNFLAGGED)} drawn among unflagged messages\n")

    judges = [("rules", build_judge(params.judge.model_copy(update={"backend": "rules"}), taxonomy))]
    if args.openai:
        judges.append(("openai", build_judge(params.judge.model_copy(update={"backend": "openai"}), taxonomy)))
    for name, judge in judges:
        with judge:
            verdicts, flags = judge_verdicts(judge, sessions, labelled)
        if name == "rules":
            # the taxonomy's detectors ran in the judge; the switched-off ones run here alone
            flags = {detector: flags.get(detector, set()) for detector in ISSUE_DETECTORS} | switched_off_flags(sessions, labelled)
            category_of = {detector: label.name for label in taxonomy.categories for detector in label.detectors} | OFF_CATEGORY
            print("## Rules detectors (all registered; `off` = not in the shipped taxonomy)\n")
            print(detector_table(flags, labelled, category_of))
            covered = {label.name for label in taxonomy.categories if label.detectors}
        else:
            covered = {label.name for label in taxonomy.categories}
        print(f"\n## The `{name}` judge as configured, per issue category\n")
        print(category_table(verdicts, labelled, [label.name for label in taxonomy.categories]))
        print(f"\n{name}: {message_level(verdicts, labelled, covered)}")
    print(f"\n{time.perf_counter() - started:.1f} s")


# The category each switched-off detector serves when switched on (the shipped taxonomy comments them out).
OFF_CATEGORY = {
    "curt_reply_to_distress": "Unempathetic responses",
    "premature_wrap_up": "Premature wrap-up",
    "user_objects_to_fabrication": "Chatbot hallucinates",
    "user_says_going_in_circles": "Circular conversations",
    "user_frustration_signal": "Response frustrates the user",
    "user_questions_bot": "Robotic or generic responses",
    "formulaic_openings": "Robotic or generic responses",
    "ignored_end_request": "Ignoring user's request to end session",
    "repetitive_question": "Repetitive questions",
}


if __name__ == "__main__":
    main()
