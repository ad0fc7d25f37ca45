"""Session summarisers for the hierarchical context (METHOD.md §2).

A summary grounds the simulator in a session's topics and tone. It must never copy the session's
user messages verbatim (that would make the simulation task trivial), which `verbatim_leak`
defines and both summarisers enforce:

* `LocalSummariser` (default): deterministic, offline, keyword-and-statistics summaries;
* `OpenAISummariser`: any OpenAI-compatible chat-completions endpoint; a summary that quotes the
  user falls back to the local one (and is counted).
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


@dataclass
class LocalSummariser:
    """Deterministic summaries from keywords and conversational statistics, never quotes."""

    n_keywords: int = 6
    fallbacks: int = field(default=0, init=False)

    def summarise(self, session: SessionText) -> str:
        keywords = top_keywords([text for _, text in session.messages], self.n_keywords)
        for n in range(len(keywords), -1, -1):
            summary = self._render(session, keywords[:n])
            if not verbatim_leak(summary, session.user_messages):
                return summary
        self.fallbacks += 1
        return FALLBACK_SUMMARY

    @staticmethod
    def _render(session: SessionText, keywords: list[str]) -> str:
        user = session.user_messages
        n_messages, n_user = len(session.messages), len(user)
        parts = [f"A conversation of {n_messages} messages, {n_user} of them from the user."]
        if keywords:
            parts.append("Main topics: " + ", ".join(keywords) + ".")
        if user:
            mean_words = sum(len(words(text)) for text in user) / n_user
            length = "very short" if mean_words < 5 else "short" if mean_words < 12 else "long"
            parts.append(f"The user writes {length} messages (about {round(mean_words)} words each)")
            bursts = _mean_burst(session.messages)
            if bursts >= 1.5:
                parts[-1] += f", often several in a row (about {bursts:.1f} per turn)"
            parts[-1] += "."
            questions = sum("?" in text for text in user) / n_user
            if questions >= 0.3:
                parts.append("The user asks many questions.")
            elif questions == 0:
                parts.append("The user asks no questions.")
        if session.messages:
            closer = "user" if session.messages[-1][0] == "user" else "other side"
            parts.append(f"The {closer} sent the last message.")
        return " ".join(parts)


def _mean_burst(messages: Sequence[tuple[str, str]]) -> float:
    """Mean number of consecutive user messages per user turn."""
    runs, current = [], 0
    for role, _ in messages:
        if role == "user":
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return sum(runs) / len(runs) if runs else 0.0


SUMMARY_SYSTEM_PROMPT = (
    "You summarise a conversation between a USER and an ASSISTANT in 2-3 sentences for a user "
    "simulator: the topics, what the user wants, their mood and how they write. Describe; never "
    "quote or copy the user's words."
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
        if not summary or verbatim_leak(summary, session.user_messages):
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
