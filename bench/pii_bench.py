"""Benchmark: the PII scrubber's throughput and detection quality on real chat (ESConv).

    python bench/pii_bench.py [--messages 3000] [--per-type 400] [--clean 1000] [--seed 0]

1. Throughput, both in this run on the same >= 2,000 real ESConv messages:
   (a) a plain per-message `AnalyzerEngine.analyze` loop (presidio's default engine with the same
       spaCy model and entities; only tldextract is pointed at its bundled suffix list so nothing
       tries the network), and
   (b) our scrubber end to end (`run_scrub`: read Parquet, analyse, replace, leak gate, write);
       the model load is timed separately and not counted, as in (a).
   Targets: (b) >= 500 messages/s and (b)/(a) >= 4.
2. Quality on a labelled set built here: real ESConv messages with PII injected at known spans by
   Faker (seeded) in natural sentences, plus real messages left clean. An injected value counts as
   caught when every letter/digit of it (a URL's leading "http(s)://" excepted) lies inside a
   replaced span of the expected type (PERSON for names, EMAIL_ADDRESS, PHONE_NUMBER, URL,
   IP_ADDRESS, CREDIT_CARD); a name's honorifics and degree suffixes ("Dr", "Frau", "B.Sc.")
   need not be covered. Lowercase names are measured too (no target). "Altered" = the scrubber
   changed the clean message at all; real messages do mention real places and people, so part of
   that is correct scrubbing.
   Targets: recall >= 0.99 for e-mail / phone / URL / IP / card, >= 0.90 for names; <= 3 % of
   clean messages altered.

ESConv (CC BY-NC 4.0) is read at run time from ../shared/datasets/esconv/ beside the repository;
none of its text is stored in the repository, and this script prints no message text.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as stages/scrub_pii.py sets it (before numpy loads)

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ESCONV = REPO.parent / "shared" / "datasets" / "esconv"
ENTITIES = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "URL", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "LOCATION"]


# --- ESConv -> canonical tables -------------------------------------------------------------


def load_esconv() -> list[dict]:
    if not ESCONV.is_dir():
        sys.exit(f"ESConv not found at {ESCONV} (the benchmark needs the shared dataset)")
    conversations = []
    for split in ("train", "valid", "test"):
        with open(ESCONV / f"{split}.jsonl", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle):
                record = json.loads(line)
                record["_id"] = f"esconv-{split}-{line_no:04d}"
                conversations.append(record)
    return conversations


def canonical_tables(conversations: list[dict], max_messages: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    sessions, messages, users = [], [], []
    for conversation in conversations:
        if len(messages) >= max_messages:
            break
        session_id = conversation["_id"]
        sessions.append({
            "session_id": session_id, "user_id": f"user-{session_id}", "source": "esconv", "session_index": 0,
            "started_at": None, "chatbot_id": None, "topic": conversation.get("situation") or None,
            "metadata": json.dumps({key: conversation.get(key) for key in ("emotion_type", "problem_type", "experience_type")}, sort_keys=True),
        })
        turns = [turn for turn in conversation["dialog"] if turn["text"].strip()]
        for index, turn in enumerate(turns):
            messages.append({
                "session_id": session_id, "turn_index": index, "role": "user" if turn["speaker"] == "usr" else "assistant",
                "text": turn["text"], "timestamp": None,
                "metadata": json.dumps({"strategy": turn["strategy"]} if turn.get("strategy") else {}),
            })
        users.append({"user_id": f"user-{session_id}", "source": "esconv", "n_sessions": 1, "profile": "{}"})
    return pd.DataFrame(sessions), pd.DataFrame(messages), pd.DataFrame(users)


# --- 1. throughput --------------------------------------------------------------------------


def offline_tldextract() -> None:
    """presidio's stock EmailRecognizer calls `tldextract.extract`, which downloads the public
    suffix list on first use; point the module-level extractor at the bundled snapshot."""
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(cache_dir=None, suffix_list_urls=())


def baseline_rate(texts: list[str]) -> float:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from dial.pii import SPACY_MODEL

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
    })
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    for text in texts[:20]:  # warm-up (lazy recogniser loading, regex compilation)
        engine.analyze(text, language="en", entities=ENTITIES, score_threshold=0.5)
    started = time.perf_counter()
    for text in texts:
        engine.analyze(text, language="en", entities=ENTITIES, score_threshold=0.5)
    return len(texts) / (time.perf_counter() - started)


def scrubber_rate(tables, analyzer, params) -> tuple[float, dict]:
    from dial import io, paths
    from dial.pii import run_scrub

    sessions, messages, users = tables
    with tempfile.TemporaryDirectory(prefix="dial-pii-bench-") as scratch:
        scratch = Path(scratch)
        few = sessions["session_id"].iloc[:2]
        for name, part in (("warm", lambda frame: frame[frame["session_id"].isin(few)]), ("in", lambda frame: frame)):
            io.SESSIONS.write(part(sessions), paths.sessions_file(scratch / name))
            io.MESSAGES.write(part(messages), paths.messages_file(scratch / name))
            io.USERS.write(users[users["user_id"].isin(part(sessions)["user_id"])], paths.users_file(scratch / name))
        run = lambda name: run_scrub(  # noqa: E731
            params, scratch / name, scratch / f"{name}-out", scratch / f"{name}-out" / "pii_findings.parquet",
            scratch / f"{name}.json", analyzer=analyzer, progress=False,
        )
        run("warm")  # warm-up, as for the baseline (first-call imports: duckdb, pyarrow writers, ...)
        started = time.perf_counter()
        report = run("in")
        seconds = time.perf_counter() - started
    return len(messages) / seconds, report


# --- 2. quality -----------------------------------------------------------------------------

TEMPLATES = {
    "PERSON": [
        "My friend {v} said I should talk to someone.", "I talked to {v} yesterday about it.",
        "{v} told me it would be fine.", "My sister {v} is worried about me.", "I went out with {v} last week.",
        "Me and {v} broke up a month ago.", "{v} is my boss and she is not helping.", "Did you ever talk to {v}?",
        "I miss {v} so much.", "Honestly {v} has been the only one there for me.", "It was {v} who found out first.",
        "I keep thinking about what {v} did.",
    ],
    "EMAIL_ADDRESS": [
        "Email me at {v} if you want.", "My email is {v}.", "You can reach me at {v} anytime.",
        "Send it to {v} please.", "{v} is my address.", "I got a message from {v} this morning.",
    ],
    "PHONE_NUMBER": [
        "Call {v} if you can.", "My number is {v}.", "Text me at {v}.", "You can reach me on {v} after work.",
        "{v} is my cell.", "He kept calling me from {v} all night.", "Ring me on {v}.",
    ],
    "URL": [
        "Check out {v} for more.", "I read about it on {v}.", "Here is the link {v}", "My blog is {v}.",
        "I found this site {v} really helpful.", "Have you seen {v}?",
    ],
    "IP_ADDRESS": [
        "My ip is {v}.", "The server at {v} is down again.", "I logged in from {v} last night.",
        "Someone from {v} keeps trying to hack me.",
    ],
    "CREDIT_CARD": [
        "My card number is {v}.", "I paid with {v} and it got declined.", "Charge it to {v}.",
        "They stole my card {v} and spent everything.",
    ],
}
EXPECTED = {name: {name} for name in TEMPLATES}  # the placeholder type that counts as caught


def phone_values(fake, rng: random.Random) -> str:
    """Phone numbers in several common formats (US, UK, international)."""
    digits = lambda n: "".join(str(rng.randint(0, 9)) for _ in range(n))  # noqa: E731
    area = lambda: str(rng.randint(2, 9)) + digits(2)  # noqa: E731
    exchange = lambda: str(rng.randint(2, 9)) + digits(2)  # noqa: E731
    formats = [
        lambda: fake.phone_number(),
        lambda: f"({area()}) {exchange()}-{digits(4)}",
        lambda: f"{area()}-{exchange()}-{digits(4)}",
        lambda: f"{area()}.{exchange()}.{digits(4)}",
        lambda: f"+1 {area()} {exchange()} {digits(4)}",
        lambda: f"{area()}{exchange()}{digits(4)}",
        lambda: f"+44 20 {rng.randint(7000, 8999)} {digits(4)}",
        lambda: f"07{rng.randint(400, 999)} {digits(6)}",
        lambda: f"+49 30 {digits(8)}",
    ]
    return rng.choice(formats)()


def card_values(fake, rng: random.Random) -> str:
    number = fake.credit_card_number()
    style = rng.randrange(3)
    if style == 1 and len(number) == 16:
        return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    if style == 2 and len(number) == 16:
        return "-".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def url_values(fake, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return fake.url()
    if kind == 1:
        return fake.domain_name()
    if kind == 2:
        return f"https://{fake.domain_name()}/{fake.uri_path()}"
    return f"www.{fake.domain_name()}"


def make_value(kind: str, fake, rng: random.Random, lowercase: bool = False) -> str:
    if kind == "PERSON":
        value = fake.first_name() if rng.random() < 0.4 else fake.name()
        return value.lower() if lowercase else value
    if kind == "EMAIL_ADDRESS":
        return fake.email() if rng.random() < 0.7 else fake.free_email()
    if kind == "PHONE_NUMBER":
        return phone_values(fake, rng)
    if kind == "URL":
        return url_values(fake, rng)
    if kind == "IP_ADDRESS":
        return fake.ipv4()
    if kind == "CREDIT_CARD":
        return card_values(fake, rng)
    raise ValueError(kind)


def build_labelled(pool: list[str], per_type: int, n_clean: int, seed: int):
    """(text, kind, start, end) injected samples, and clean real messages."""
    from faker import Faker

    Faker.seed(seed)
    fake = Faker(["en_US", "en_GB", "en_IN", "de_DE", "es_ES", "fr_FR"])
    rng = random.Random(seed)
    pool = list(pool)
    rng.shuffle(pool)
    clean = pool[:n_clean]
    hosts = pool[n_clean:]
    samples = []
    kinds = list(TEMPLATES) + ["PERSON (lowercase)"]
    for kind in kinds:
        base = kind.split()[0]
        for i in range(per_type):
            value = make_value(base, fake, rng, lowercase=kind.endswith("(lowercase)"))
            template = rng.choice(TEMPLATES[base])
            sentence = template.replace("{v}", value)
            offset = template.index("{v}")
            host = rng.choice(hosts).strip()
            if rng.random() < 0.5:
                text = f"{host} {sentence}"
                start = len(host) + 1 + offset
            else:
                text = f"{sentence} {host}"
                start = offset
            samples.append((text, kind, start, start + len(value)))
    return samples, clean


#: Honorifics and degree suffixes Faker adds to names ("Dr", "Frau", "B.Sc.", "DVM"): not
#: identifying, so a name counts as caught without them.
TITLES = frozenset(
    """mr mrs ms miss mx dr prof herr frau dipl ing univ mag sr sra srta mme mlle jr ii iii iv v
    phd md dds dvm mba bsc msc ba ma beng meng llb llm""".split()
)


def required_positions(kind: str, text: str, start: int, end: int) -> list[int]:
    """Letters/digits of the injected value that must be inside a replaced span: all of them,
    except a URL's leading "http(s)://" and a name's honorifics / degree suffixes."""
    value = text[start:end]
    skip: set[int] = set()
    scheme = re.match(r"https?://", value)
    if scheme:
        skip.update(range(start, start + scheme.end()))
    if kind.startswith("PERSON"):
        for token in re.finditer(r"\S+", value):
            if re.sub(r"[.\-]", "", token.group()).lower() in TITLES:
                skip.update(range(start + token.start(), start + token.end()))
    return [position for position in range(start, end) if text[position].isalnum() and position not in skip]


def covered(kind: str, start: int, end: int, text: str, spans: list[tuple[int, int]]) -> bool:
    return all(any(s <= position < e for s, e in spans) for position in required_positions(kind, text, start, end))


def shape(text: str) -> str:
    out = re.sub(r"[A-Z]", "X", text)
    out = re.sub(r"[a-z]", "x", out)
    out = re.sub(r"\d", "d", out)
    return re.sub(r"(.)\1{3,}", r"\1\1\1\1", out)


def quality(analyzer, conversations, per_type: int, n_clean: int, seed: int) -> dict:
    from dial.pii import scrub_tables

    pool = [turn["text"] for conversation in conversations for turn in conversation["dialog"]
            if 20 <= len(turn["text"]) <= 200 and "@" not in turn["text"]]
    pool = list(dict.fromkeys(pool))
    samples, clean = build_labelled(pool, per_type, n_clean, seed)
    texts = [sample[0] for sample in samples] + clean
    messages = pd.DataFrame({
        "session_id": [f"q{i:05d}" for i in range(len(texts))], "turn_index": 0, "role": "user",
        "text": texts, "timestamp": None, "metadata": "{}",
    })
    sessions = pd.DataFrame({
        "session_id": messages["session_id"], "user_id": messages["session_id"], "source": "bench", "session_index": 0,
        "started_at": None, "chatbot_id": None, "topic": None, "metadata": "{}",
    })
    users = pd.DataFrame({"user_id": messages["session_id"], "source": "bench", "n_sessions": 1, "profile": "{}"})
    result = scrub_tables(sessions, messages, users, analyzer)
    spans = defaultdict(list)
    for row in result.findings.itertuples(index=False):
        spans[row.session_id].append((row.entity_type, int(row.start), int(row.end)))

    table = {}
    for kind in list(TEMPLATES) + ["PERSON (lowercase)"]:
        base = kind.split()[0]
        caught = other = 0
        total = 0
        for index, (text, sample_kind, start, end) in enumerate(samples):
            if sample_kind != kind:
                continue
            total += 1
            found = spans[f"q{index:05d}"]
            if covered(kind, start, end, text, [(s, e) for t, s, e in found if t in EXPECTED[base]]):
                caught += 1
            elif covered(kind, start, end, text, [(s, e) for t, s, e in found]):
                other += 1
        table[kind] = (caught, other, total)

    altered_types = Counter()
    altered_shapes = Counter()
    altered = 0
    clean_offset = len(samples)
    for i, text in enumerate(clean):
        found = spans[f"q{clean_offset + i:05d}"]
        if found:
            altered += 1
        for entity_type, start, end in found:
            altered_types[entity_type] += 1
            altered_shapes[(entity_type, "capitalised" if text[start:end][:1].isupper() else "lowercase/other")] += 1
    return {"table": table, "clean": (altered, len(clean)), "altered_types": altered_types, "altered_shapes": altered_shapes}


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="ESConv messages for the throughput run (>= 2000)")
    parser.add_argument("--per-type", type=int, default=400, help="injected samples per entity type")
    parser.add_argument("--clean", type=int, default=1000, help="clean real messages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-process", type=int, default=1, help="pii.n_process for (b) (default params: 1)")
    args = parser.parse_args()

    offline_tldextract()
    from dial.params import PiiParams
    from dial.pii import Analyzer

    conversations = load_esconv()
    params = PiiParams(entities=ENTITIES, n_process=args.n_process)
    tables = canonical_tables(conversations, args.messages)
    texts = list(tables[1]["text"])
    print(f"machine: {os.cpu_count()} CPUs, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"throughput corpus: {len(texts)} ESConv messages ({len(set(texts))} distinct) in {len(tables[0])} sessions; "
          f"pii params: batch_size={params.batch_size} n_process={params.n_process} threshold={params.score_threshold}")

    baseline = baseline_rate(texts)
    print(f"(a) plain AnalyzerEngine.analyze loop: {baseline:8.1f} messages/s")
    started = time.perf_counter()
    analyzer = Analyzer(params)
    load_seconds = time.perf_counter() - started
    ours, report = scrubber_rate(tables, analyzer, params)
    print(f"(b) run_scrub end to end:              {ours:8.1f} messages/s   (model load {load_seconds:.1f} s, not counted; "
          f"{report['distinct_texts']} distinct texts incl. topics/metadata, {report['distinct_texts_through_ner']} through the NER)")
    print(f"    ratio b/a = {ours / baseline:.2f}   targets: b >= 500 msg/s {'OK' if ours >= 500 else 'MISSED'}, "
          f"b/a >= 4 {'OK' if ours / baseline >= 4 else 'MISSED'}")
    print(f"    load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    result = quality(analyzer, conversations, args.per_type, args.clean, args.seed)
    print()
    print(f"quality (seed {args.seed}): injected values caught as the expected type")
    print(f"  {'type':<22} {'recall':>7} {'caught':>7} {'other type':>11} {'n':>5}  target")
    targets = {"PERSON": 0.90, "PERSON (lowercase)": None}
    for kind, (caught, other, total) in result["table"].items():
        target = targets.get(kind, 0.99)
        verdict = "(none)" if target is None else f">= {target:.2f} {'OK' if caught / total >= target else 'MISSED'}"
        print(f"  {kind:<22} {caught / total:7.3f} {caught:7d} {other:11d} {total:5d}  {verdict}")
    altered, n_clean = result["clean"]
    share = altered / n_clean
    print(f"  clean real messages altered: {altered}/{n_clean} = {share:.1%}   target <= 3% {'OK' if share <= 0.03 else 'MISSED'}")
    print(f"  replacements in clean messages by type: {dict(sorted(result['altered_types'].items()))}")
    print(f"  ... by type and case: {dict(sorted(result['altered_shapes'].items()))}")


if __name__ == "__main__":
    main()
