"""Session summarisers for the hierarchical context (METHOD.md §2).

A summary grounds the simulator in a session's topics and tone. It must never copy the session's
user messages verbatim (that would make the simulation task trivial), which `verbatim_leak`
defines and both summarisers enforce.

It must not describe the session's structure either (issue #11): message or turn counts, message
lengths, several messages in a row, who spoke first or last. The current-session summary is in the
context of both a real session and the simulations grounded on it, so the discriminator could check
the messages against such a statement, and a simulator that cannot produce that structure (today:
bursts of user messages) could never honour it. The local summary is built from the words of the
session only (keywords, mood words, question and exclamation marks), so it reads the same however
the same text is split into messages and turns (unless avoiding a quote drops a keyword: the quote
check is per message); `states_structure` catches explicit structural statements:

* `LocalSummariser` (default): deterministic, offline summaries of topics and tone;
* `OpenAISummariser`: any OpenAI-compatible chat-completions endpoint, asked for topics and tone
  only; a summary that quotes the user or states the structure falls back to the local one (and is
  counted).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from dial.errors import DialError
from dial.openai_client import chat_completion
from dial.params import ContextParams, OpenAIEndpointParams

log = logging.getLogger(__name__)

# A user message of at least this many words must not appear verbatim in a summary, and no run of
# LEAK_NGRAM consecutive words of any user message may appear either.
LEAK_MIN_MESSAGE_WORDS = 4
LEAK_NGRAM = 6
FALLBACK_SUMMARY = "Session summary unavailable."  # 3 words: cannot contain a leak by definition

_WORD = re.compile(r"[a-z0-9']+")
STOPWORDS = frozenset(
    """a about above after again against all am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing
    don't down during each few for from further had hadn't has hasn't have haven't having he he'd
    he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in into
    is isn't it it's its itself let's me more most mustn't my myself no nor not of off on once only or
    other ought our ours ourselves out over own same shan't she she'd she'll she's should shouldn't so
    some such than that that's the their theirs them themselves then there there's these they they'd
    they'll they're they've this those through to too under until up very was wasn't we we'd we'll
    we're we've were weren't what what's when when's where where's which while who who's whom why
    why's with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves
    yeah yes yep ok okay oh lol haha hahaha hah hi hello hey just like really well also get got go
    going know think thing things one much many lot im dont thats its ive youre gonna wanna u ur
    pretty good great nice cool sure thanks thank right now will can't would've could've say said
    time way want make even still back us bye goodbye tell told more talk""".split()
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def verbatim_leak(summary: str, user_messages: Sequence[str]) -> bool:
    """True if the summary copies a user message (>= 4 words) or any 6-word run of one."""
    summary_words = words(summary)
    if len(summary_words) < min(LEAK_MIN_MESSAGE_WORDS, LEAK_NGRAM):
        return False
    joined = " " + " ".join(summary_words) + " "
    summary_ngrams = {tuple(summary_words[i : i + LEAK_NGRAM]) for i in range(len(summary_words) - LEAK_NGRAM + 1)}
    for message in user_messages:
        message_words = words(message)
        if len(message_words) >= LEAK_MIN_MESSAGE_WORDS and f" {' '.join(message_words)} " in joined:
            return True
        for i in range(len(message_words) - LEAK_NGRAM + 1):
            if tuple(message_words[i : i + LEAK_NGRAM]) in summary_ngrams:
                return True
    return False


@dataclass(frozen=True)
class SessionText:
    """What a summariser sees of one session."""

    messages: tuple[tuple[str, str], ...]  # (role, text), in order
    topic: str | None = None

    @property
    def user_messages(self) -> list[str]:
        return [text for role, text in self.messages if role == "user"]


def content_words(texts: Sequence[str]) -> list[str]:
    return [w for text in texts for w in words(text) if len(w) >= 3 and w not in STOPWORDS and not w.isdigit()]


def top_keywords(texts: Sequence[str], k: int) -> list[str]:
    counts = Counter(content_words(texts))
    # Ties broken alphabetically so summaries are deterministic.
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]]


class Summariser(Protocol):
    def summarise(self, session: SessionText) -> str: ...


# Mood words (lower case) for the tone of the user's words.
NEGATIVE_WORDS = frozenset(
    """afraid alone angry annoyed anxious anxiety ashamed awful bad bored crying cry depressed
    depression difficult disappointed exhausted fail failed frustrated guilty hard hate hopeless hurt
    lonely lost mad nervous overwhelmed pain panic sad scared sick sorry stress stressed struggling
    terrible tired upset worried worry worse worst""".split()
)
POSITIVE_WORDS = frozenset(
    """amazing awesome better calm cool enjoy enjoyed excited fun glad good great happy hope hopeful
    interesting laugh love loved lucky nice proud relaxed relieved thankful thanks wonderful""".split()
)
N_MOOD_WORDS = 3  # mood words named in the tone sentence

# Explicit statements of a session's structure: "12 messages", "several short replies", "two
# words", "the last message", "in a row". Checked on LLM summaries; the local one never makes them.
_STRUCTURE = re.compile(
    r"\b(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|several|few|multiple)\s+(?:\w+\s+)?"
    r"(?:messages?|turns?|replies|words?|sentences?|lines?)\b"
    r"|\b(?:last|first|final)\s+(?:message|turn|reply|word)\b"
    r"|\bin a row\b|\bper (?:message|turn)\b",
    re.IGNORECASE,
)


def states_structure(summary: str) -> bool:
    """True if the summary states counts, lengths, bursts or who spoke first or last."""
    return _STRUCTURE.search(summary) is not None


@dataclass
class LocalSummariser:
    """Deterministic summaries of topics and tone from the session's words, never quotes and never
    its structure (see the module docstring)."""

    n_keywords: int = 6
    fallbacks: int = field(default=0, init=False)

    def summarise(self, session: SessionText) -> str:
        keywords = top_keywords([text for _, text in session.messages], self.n_keywords)
        tone = describe_tone(session.user_messages)
        for n in range(len(keywords), -1, -1):
            summary = " ".join(([f"Main topics: {', '.join(keywords[:n])}."] if n else []) + [tone])
            if not verbatim_leak(summary, session.user_messages):
                return summary
        self.fallbacks += 1
        return FALLBACK_SUMMARY


def describe_tone(user_texts: Sequence[str]) -> str:
    """The mood of the user's words and whether they ask questions or exclaim: counted over all the
    user's words and marks together, never per message, so splitting the same text into more
    messages changes nothing."""
    user_words = [word for text in user_texts for word in words(text)]
    negative = Counter(word for word in user_words if word in NEGATIVE_WORDS)
    positive = Counter(word for word in user_words if word in POSITIVE_WORDS)
    n_negative, n_positive = sum(negative.values()), sum(positive.values())
    if n_negative > n_positive:
        mood, named = "negative", negative
    elif n_positive > n_negative:
        mood, named = "positive", positive
    else:
        mood, named = ("mixed" if n_negative else "neutral"), negative + positive
    # Ties broken alphabetically so summaries are deterministic.
    mood_words = [word for word, _ in sorted(named.items(), key=lambda item: (-item[1], item[0]))[:N_MOOD_WORDS]]
    tone = f"The user's tone is {mood}" + (f" ({', '.join(mood_words)})" if mood_words else "")
    text = " ".join(user_texts)
    asks = "asks questions" if "?" in text else "asks no questions"
    exclaims = " and uses exclamation marks" if "!" in text else ""
    return f"{tone}; the user {asks}{exclaims}."


SUMMARY_SYSTEM_PROMPT = (
    "You summarise a conversation between a USER and an ASSISTANT in 2-3 sentences for a user "
    "simulator: only the topics, what the user wants, and their mood and tone. Describe; never "
    "quote or copy the user's words. Never describe the conversation's structure: not how many "
    "messages or turns there are, not how long the messages are, not whether the user sends "
    "several messages in a row, not who speaks first or last."
)


@dataclass
class OpenAISummariser:
    """Summaries from any OpenAI-compatible `/chat/completions` endpoint."""

    endpoint: OpenAIEndpointParams
    fallback: LocalSummariser = field(default_factory=LocalSummariser)
    fallbacks: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.endpoint.model:
            raise DialError("context.openai.model is empty: name the model served at context.openai.base_url")

    def summarise(self, session: SessionText) -> str:
        transcript = "\n".join(f"{role.upper()}: {text}" for role, text in session.messages)
        if session.topic:
            transcript = f"(Session topic: {session.topic})\n{transcript}"
        summary = self._complete(transcript).strip()
        if not summary or verbatim_leak(summary, session.user_messages) or states_structure(summary):
            self.fallbacks += 1
            return self.fallback.summarise(session)
        return summary

    def _complete(self, transcript: str) -> str:
        return chat_completion(
            self.endpoint.base_url,
            self.endpoint.model,
            [
                {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
                {"role": "user", "content": transcript},
            ],
            api_key_env=self.endpoint.api_key_env,
            timeout_s=self.endpoint.timeout_s,
            max_retries=self.endpoint.max_retries,
            temperature=self.endpoint.temperature,
            max_tokens=self.endpoint.max_tokens,
            what="summariser endpoint",
        ).text


def make_summariser(params: ContextParams) -> Summariser:
    if params.summariser == "openai":
        return OpenAISummariser(params.openai)
    return LocalSummariser()
