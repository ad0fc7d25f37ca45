"""Benchmark: how precise the judges are on real chats, against hand labels.

    python bench/judge_bench.py                  # the rules judge on the labelled set (~5 s, one core)
    python bench/judge_bench.py --openai         # also the `openai` judge (judge.openai in params.yaml)
    python bench/judge_bench.py --draw 4 --detectors incomplete_message,user_confused --per-detector 5 \
        --out /tmp/candidates.jsonl              # draw more messages to label (reads both corpora, ~1 min)

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
from pathlib import Path

from dial.data.chitchat import read_chitchat
from dial.data.esconv import read_esconv
from dial.evaluation.judges import JudgeInput, build_judge
from dial.evaluation.judges.labelled import UNFLAGGED, LabelledMessage, load_labelled_messages, read_sessions
from dial.evaluation.judges.rules import ISSUE_DETECTORS, OFF_BY_DEFAULT
from dial.evaluation.stats import wilson_interval
from dial.evaluation.taxonomy import load_taxonomy
from dial.params import DataParams, load_params

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "tests" / "fixtures" / "judge_labels.jsonl"
ESCONV = REPO.parent / "shared" / "datasets" / "esconv"


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
         seed: int) -> list[dict]:
    """Messages flagged by `detectors` (as they are now) that the set does not hold yet: up to
    `per_detector` per detector and corpus, drawn with a seed per (corpus, detector, round)."""
    taken = {(row.source, row.session_id, row.turn_index) for row in labelled}
    corpora = {"chitchat": read_chitchat(DataParams(source="chitchat"), progress=False),
               "esconv": read_esconv(DataParams(source="esconv", path=str(esconv_dir)), progress=False)}
    drawn = []
    for source, rows in corpora.items():
        sessions = {row.session.session_id: [(i, m.role, m.text) for i, m in enumerate(row.session.messages)]
                    for row in rows if row.session is not None}
        for name in detectors:
            pool = sorted((sid, turn) for sid in sorted(sessions) for turn, _ in ISSUE_DETECTORS[name](sessions[sid])
                          if (source, sid, turn) not in taken)
            rng = random.Random(f"{seed}-{source}-{name}-round{round_number}")
            for sid, turn in rng.sample(pool, min(per_detector, len(pool))):
                taken.add((source, sid, turn))
                drawn.append({"source": source, "session_id": sid, "turn_index": turn, "round": round_number, "drawn_as": name})
    return drawn


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
    args = parser.parse_args()

    params = load_params(args.params)
    taxonomy = load_taxonomy(args.taxonomy or (args.params.parent / params.judge.taxonomy))
    labelled = load_labelled_messages(args.labels, taxonomy)
    if not args.esconv.is_dir():
        sys.exit(f"ESConv not found at {args.esconv} (the labelled set reads it in place)")
    if args.openai and not params.judge.openai.model:
        sys.exit("--openai: set judge.openai.model (and base_url) in params.yaml")

    if args.draw is not None:
        detectors = [name for name in args.detectors.split(",") if name]
        unknown = [name for name in detectors if name not in ISSUE_DETECTORS]
        if not detectors or unknown or args.out is None:
            sys.exit(f"--draw needs --out and --detectors among {sorted(ISSUE_DETECTORS)} (unknown: {unknown})")
        rows = draw(args.draw, detectors, args.per_detector, labelled, args.esconv, args.seed)
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
}


if __name__ == "__main__":
    main()
