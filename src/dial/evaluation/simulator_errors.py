"""Simulator errors: what a simulated user should never do (UserLM's role adherence; tau2-bench's
review of user-simulator errors), found by deterministic, offline text rules, so that a chatbot's
issue rate can be read without the sessions its simulated user broke.

Flags of one user message (`message_flags`):

    speaks_as_assistant     it talks like the chatbot: offers help ("How can I help you today?",
                            "Is there anything else I can help you with?"), says it is an AI ("As an
                            AI…", "I'm a language model"), or supports the way a counsellor does
                            ("It sounds like you're…", "How does that make you feel?", "Thank you
                            for sharing", "I'm here to listen", "Have you considered talking to
                            a therapist?")
    describes_instructions  it talks about its instructions or context: "you are role-playing",
                            "You are a user who…", "system prompt", "the user's next message", a
                            heading or label of the rendered context ("## Your role", "User
                            profile:", "This session:", "Conversation prompt (shown to both
                            speakers)", "Main topics:")
    meta_talk               it talks about the conversation as a simulation: "simulated",
                            "simulation", "role-play", "in/out of character", "(end of
                            conversation)", "the user would…", the end marker's name without its
                            brackets ("endconversation")
    markup_leak             chat-template or markup text: "<|", "|>" (template tokens, marker
                            debris), "<s>", "[INST]", "<<SYS>>", "im_start", a line opening with a
                            speaker prefix ("assistant:", "User:", "system:", "bot:"), an invented
                            tag ("<reply>", "</user>"); the PII placeholders of the scrubbed data
                            ("<PERSON_1>") are not markup: real messages hold them too
    verbatim_context        it copies at least `VERBATIM_MIN_WORDS` (8) consecutive words of the
                            context the simulator was given (`contexts.context_text` of the real
                            session that grounds it: instruction, profile, summaries, the earlier
                            session's messages, this session's summary); words are lower-cased
                            runs of letters, digits and apostrophes, so punctuation and case do
                            not hide a copy
    contradicts_profile     it states a name, an age or a gender that the profile
                            (`contexts.profile`, "key: value" lines) contradicts: "my name is X"
                            against a `name` / `first name`; "I'm 34 years old" / "my age is 34"
                            against an `age` (a number or a range such as "25-34", one year of
                            slack either side); "I'm a woman / mom / guy…" against a `gender` /
                            `sex` of female or male. Only when both sides are there.

The four first are kinds of *role break* (`ROLE_BREAK_FLAGS`).

Flag of one session (`ended_mid_task`): the user ended the session (the simulator wrote the end
marker, `stop_reason` user_ended; a real user: left within the compared turns) and either
    * in its first user turn (no user turn, or one, before the end), or
    * right after a chatbot message that asks a question: its last chatbot message contains "?"
      and no farewell ("bye", "take care", "see you", "talk soon", "good night", "have a nice day").
Ending is an event, not a message (the end marker often comes alone), so this flag counts in the
session rate, not in the message rate. "thank you, bye" after the chatbot's closing is not
mid-task; "bye" after "What happened next?" is.

What the rules cannot see: any contradiction other than a stated name, age or gender (a feeling,
an event, a relationship or a topic that the profile or the current-session summary contradicts:
that needs reading, i.e. an LLM judge); names replaced by PII placeholders (they are never
compared); a role break in words not listed above (a paraphrase of an assistant's offer); a copy
of fewer than 8 words, or a paraphrase of the context; whether the user, ending after a question,
answered it first. The rules also fire on real users now and then (a chitchat user who writes
"thanks for sharing", quotes in "<…>"; an ESConv seeker who restates the situation they typed
before the chat, which their context holds): run the real sessions through the same rules (the
control row of the report) for the false-positive floor. Measured on the raw corpora when these
rules were written (2026-12): role breaks in 18 of 19,989 ESConv seeker messages (0.09 %) and in
80 of 258,145 chitchat messages (0.03 %); a verbatim copy of the ESConv situation in 105 seeker
messages (0.5 %).

Rates (`summarise`): the share of user messages with any message flag [95 % bootstrap interval
over sessions: messages of one session are not independent] and the share of sessions with any
flag, the ending included [95 % Wilson interval], with their n and the count per flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from dial.evaluation import intervals, stats

VERBATIM_MIN_WORDS = 8
ROLE_BREAK_FLAGS = ("speaks_as_assistant", "describes_instructions", "meta_talk", "markup_leak")
MESSAGE_FLAGS = (*ROLE_BREAK_FLAGS, "verbatim_context", "contradicts_profile")
ENDED_MID_TASK = "ended_mid_task"
ROLE_BREAK = "role_break"  # any of ROLE_BREAK_FLAGS


def _any(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


SPEAKS_AS_ASSISTANT = _any(
    # Offering help, the way an assistant opens or closes; "how can I help my son?" has an object.
    r"\bhow (?:can|could|may) i (?:help|assist) you\b",
    r"\bhow may i (?:help|assist)\b",
    r"\bhow can i (?:help|assist)(?: you)? today\b",
    r"\bwhat can i (?:do for you|help you with)\b",
    r"\bis there (?:anything|something) (?:else )?(?:that )?i can (?:do for you|help (?:you )?with|assist (?:you )?with)\b",
    r"\b(?:i am|i'm) (?:always )?here to (?:help|assist|support|listen)\b",
    r"\bfeel free to (?:share|reach out|ask me|tell me)\b",
    # Saying it is a machine.
    r"\bas an? (?:ai|artificial intelligence|(?:ai )?language model|ai assistant|virtual assistant|chatbot)\b",
    r"\bi(?: am|'m) (?:just |only )?an? (?:ai|artificial intelligence|(?:ai )?language model|virtual assistant|chatbot)\b(?! \w+(?:er|ist)\b)",
    # Supporting the way a counsellor does.
    r"\bit sounds like you(?:'re| are| have| feel|'ve)\b",
    r"\bhow does (?:that|this|it) make you feel\b",
    r"\bthank(?:s| you) for (?:sharing|opening up)\b",
    r"\byour feelings are (?:valid|understandable)\b",
    # A suggestion, not a seeker's plan ("I may be talking to a professional" is what seekers write).
    r"\b(?:have|did) you (?:ever )?(?:thought about|considered|tried) (?:talking|speaking|reaching out) to a "
    r"(?:mental health )?(?:professional|therapist|counsel+or)\b",
)

_CONTEXT_LABELS = (
    r"your role|user profile|long-term context|previous sessions(?: \(oldest first\))?"
    r"|most recent previous session(?: \(verbatim\))?|this session|current[- ]session summary"
)
DESCRIBES_INSTRUCTIONS = _any(
    rf"(?:^|\n)\s*#{{1,6}}\s*(?:{_CONTEXT_LABELS})\b",  # a heading of the rendered context
    rf"(?:^|\n)\s*(?:{_CONTEXT_LABELS})\s*:",  # or the same as a label
    r"\byou(?: are|'re) (?:role-?playing|playing (?:the|a) (?:user|person|real person))\b",
    r"\byou(?: are|'re) (?:a|the) (?:real )?(?:user|person) (?:who|chatting|talking)\b",
    r"\byou are (?:a|the) user\b",
    r"\bsystem (?:prompt|message|instructions?)\b",
    r"\bmy (?:instructions|prompt) (?:say|says|tell|are|is)\b",
    r"\baccording to (?:the|my) (?:instructions|profile|context|summary)\b",
    r"\b(?:in|from) (?:the|my) (?:user profile|session summary)\b",
    r"\bcurrent[- ]session summary\b",
    r"\bthe user'?s (?:next |own )?(?:message|voice)\b",
    r"\bconversation prompt \(shown to both speakers\)",
    r"\bthe user's situation, in their own words\b",
    r"(?:^|\n)\s*main topics\s*:",
)

META_TALK = _any(
    r"\bsimulat(?:ed|ion|ing|or)\b",
    r"\brole-?play(?:ing|ed)?\b",
    r"\b(?:in|out of) character\b",
    r"[\[(*]\s*end(?: of)?(?: the)? (?:conversation|chat|session|dialogue)\s*[\])*]",
    r"\bendconversation\b",
    r"\bthe user (?:would|should|says|said|wants|ends|replies|writes)\b",
)

PII_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")  # dial.pii's placeholders: real messages hold them
MARKUP_LEAK = _any(
    r"</?\||\|/?>",  # chat-template tokens and marker debris ("<|im_start|>", "</|msg", "|>")
    r"</?s>|\[/?INST\]|<</?SYS>>|\bim_(?:start|end)\b",
    r"(?:^|\n)\s*(?:user|assistant|system|human|bot|chatbot|seeker|supporter)\s*:",  # speaker prefix
    r"</?[A-Za-z][A-Za-z0-9_\-]*(?:\s[^<>\n]*)?/?>",  # a tag; placeholders are removed first
)

FAREWELL = re.compile(
    r"\b(?:bye|goodbye|good-bye|take care|see you|see ya|talk (?:to you )?(?:soon|later)|good ?night"
    r"|have a (?:good|great|nice|lovely|wonderful) (?:day|night|evening|weekend|one))\b",
    re.IGNORECASE,
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class SimulatorContext:
    """What the simulator was given for a session: the rendered context and its profile part."""

    text: str = ""
    profile: str = ""


# --------------------------------------------------------------------------------------------
# Message flags
# --------------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    return str(text).replace("\u2019", "'").replace("\u2018", "'")


def role_break_flags(text: str) -> list[str]:
    """The role-break kinds (ROLE_BREAK_FLAGS order) of one user message (module docstring)."""
    text = _plain(text)
    found = []
    if SPEAKS_AS_ASSISTANT.search(text):
        found.append("speaks_as_assistant")
    if DESCRIBES_INSTRUCTIONS.search(text):
        found.append("describes_instructions")
    if META_TALK.search(text):
        found.append("meta_talk")
    if MARKUP_LEAK.search(PII_PLACEHOLDER.sub(" ", text)):
        found.append("markup_leak")
    return found


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes inside a word) as the verbatim rule reads them."""
    return _WORD.findall(_plain(text).lower())


def ngrams(tokens: Sequence[str], n: int = VERBATIM_MIN_WORDS) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def copies_context(text: str, context_ngrams: set[tuple[str, ...]], n: int = VERBATIM_MIN_WORDS) -> bool:
    """Whether the message holds `n` consecutive words that the context holds in the same order."""
    return bool(context_ngrams) and not ngrams(words(text), n).isdisjoint(context_ngrams)


# Profile keys ("key: value" lines of the rendered profile; nested keys "a.b" read by their last part).
NAME_KEYS = {"name", "first name", "firstname", "given name"}
AGE_KEYS = {"age"}
GENDER_KEYS = {"gender", "sex"}
FEMALE = {"female", "f", "woman", "w", "girl", "lady"}
MALE = {"male", "m", "man", "boy", "guy"}
FEMALE_WORDS = ("woman", "girl", "lady", "gal", "female", "mother", "mom", "mum", "wife", "daughter", "grandmother",
                "grandma", "girlfriend", "sister")
MALE_WORDS = ("man", "boy", "guy", "gentleman", "male", "father", "dad", "husband", "son", "grandfather", "grandpa",
              "boyfriend", "brother")
STATED_NAME = re.compile(r"\b(?:my name is|my name's|call me)\s+([A-Za-z][A-Za-z'\-]*)", re.IGNORECASE)
STATED_AGE = re.compile(
    r"\b(?:i am|i'm|im)\s+(\d{1,3})\s*(?:years?[ -]old|yrs?[ -]old|y/?o)\b|\bmy age is\s+(\d{1,3})\b", re.IGNORECASE
)
STATED_GENDER = re.compile(
    rf"\b(?:i am|i'm|im|as)\s+an?\s+(?:[a-z]+\s+)?({'|'.join(FEMALE_WORDS + MALE_WORDS)})\b(?!['’]s|-)", re.IGNORECASE
)
AGE_VALUE = re.compile(r"^\s*(\d{1,3})(?:\s*(?:-|–|to)\s*(\d{1,3}))?\s*$")
AGE_SLACK = 1  # a birthday between the profile and the session


def profile_fields(profile: str) -> dict[str, str]:
    """{"name" | "age" | "gender": value} read from the rendered profile's "key: value" lines."""
    fields = {}
    for line in str(profile).splitlines():
        key, colon, value = line.partition(":")
        if not colon or not value.strip():
            continue
        key = key.strip().lower().rsplit(".", 1)[-1].replace("_", " ")
        for field_name, keys in (("name", NAME_KEYS), ("age", AGE_KEYS), ("gender", GENDER_KEYS)):
            if key in keys:
                fields.setdefault(field_name, value.strip())
    return fields


def _gender(value: str) -> str | None:
    value = value.strip().lower()
    return "female" if value in FEMALE else "male" if value in MALE else None


def profile_contradictions(text: str, profile: str) -> list[str]:
    """Which of name / age / gender the message states against the profile (module docstring)."""
    fields = profile_fields(profile)
    text = _plain(text)
    found = []
    name = fields.get("name", "")
    stated = STATED_NAME.search(text)
    if stated and name and not PII_PLACEHOLDER.search(name) and not name.startswith("<"):
        if stated.group(1).lower() != name.split()[0].lower():
            found.append("name")
    age = AGE_VALUE.match(fields.get("age", ""))
    stated = STATED_AGE.search(text)
    if stated and age:
        years = int(stated.group(1) or stated.group(2))
        low, high = int(age.group(1)), int(age.group(2) or age.group(1))
        if not low - AGE_SLACK <= years <= high + AGE_SLACK:
            found.append("age")
    gender = _gender(fields.get("gender", ""))
    stated = STATED_GENDER.search(text)
    if stated and gender:
        said = "female" if stated.group(1).lower() in FEMALE_WORDS else "male"
        if said != gender:
            found.append("gender")
    return found


def message_flags(text: str, context: SimulatorContext = SimulatorContext(), context_ngrams: set | None = None) -> list[str]:
    """Every message flag of one user message (MESSAGE_FLAGS order). `context_ngrams`: the
    context's word n-grams when the caller has them already (one context serves many messages)."""
    found = role_break_flags(text)
    if context_ngrams is None:
        context_ngrams = ngrams(words(context.text))
    if copies_context(text, context_ngrams):
        found.append("verbatim_context")
    if profile_contradictions(text, context.profile):
        found.append("contradicts_profile")
    return found


# --------------------------------------------------------------------------------------------
# Session flag: ending mid-task
# --------------------------------------------------------------------------------------------


def asks_question(text: str) -> bool:
    """A chatbot message that asks something and does not say goodbye."""
    return "?" in str(text) and not FAREWELL.search(_plain(text))


def ended_mid_task(roles: Sequence[str], texts: Sequence[str], user_ended: bool) -> bool:
    """The module docstring's rule, on one session's messages in turn order."""
    if not user_ended:
        return False
    user_turns = sum(1 for i, role in enumerate(roles) if role == "user" and (i == 0 or roles[i - 1] != "user"))
    if user_turns <= 1:
        return True
    chatbot_texts = [text for role, text in zip(roles, texts) if role == "assistant"]
    return bool(chatbot_texts) and asks_question(chatbot_texts[-1])


# --------------------------------------------------------------------------------------------
# Per session and per group
# --------------------------------------------------------------------------------------------

COLUMNS = ["session_id", "user_messages", "flagged_messages", *MESSAGE_FLAGS, ROLE_BREAK, ENDED_MID_TASK, "flagged",
           "has_context"]


def per_session(
    messages: pd.DataFrame,
    contexts: Mapping[str, SimulatorContext],
    user_ended: Mapping[str, bool],
    session_ids: Iterable[str] = (),
) -> pd.DataFrame:
    """One row per session of `messages` and of `session_ids` (COLUMNS): its user messages, how
    many have any message flag and how many have each, whether it ended mid-task, and `flagged`
    (any of them). `contexts`: session → what its simulator was given (a real session: its own
    context); `user_ended`: session → its user ended it."""
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    ordered = ordered.assign(session_id=ordered["session_id"].astype(str))
    by_session = {str(sid): group for sid, group in ordered.groupby("session_id", sort=True)}
    rows = []
    for session_id in sorted(set(map(str, session_ids)) | set(by_session)):
        group = by_session.get(session_id, ordered.iloc[:0])
        context = contexts.get(session_id, SimulatorContext())
        context_ngrams = ngrams(words(context.text))
        counts = dict.fromkeys(MESSAGE_FLAGS, 0)
        flagged_messages = role_breaks = 0
        user_texts = group.loc[group["role"] == "user", "text"]
        for text in user_texts:
            found = message_flags(text, context, context_ngrams)
            for flag in found:
                counts[flag] += 1
            flagged_messages += bool(found)
            role_breaks += any(flag in ROLE_BREAK_FLAGS for flag in found)
        ending = ended_mid_task(list(group["role"]), list(group["text"]), bool(user_ended.get(session_id, False)))
        rows.append({
            "session_id": session_id,
            "user_messages": len(user_texts),
            "flagged_messages": flagged_messages,
            **counts,
            ROLE_BREAK: role_breaks,
            ENDED_MID_TASK: ending,
            "flagged": bool(flagged_messages) or ending,
            "has_context": bool(context.text.strip()),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def summarise(frame: pd.DataFrame, n_resamples: int, seed: int, label: str) -> dict:
    """A group's simulator-error rates (module docstring) with intervals, n and per-flag counts:
    `rate` (user messages with any message flag, of `n`), `session_rate` (sessions with any flag,
    the ending included, of `n_sessions`), `messages_by_flag`, `sessions_by_flag`."""
    weights = stats.resample_weights(len(frame), n_resamples, stats.stable_rng(seed, "simulator_errors", label))
    summary = intervals.clustered_rate(
        frame["flagged_messages"].to_numpy(dtype=np.float64), frame["user_messages"].to_numpy(dtype=np.float64), weights
    )
    n_sessions, flagged_sessions = len(frame), int(frame["flagged"].sum())
    summary["n_sessions"] = n_sessions
    summary["sessions_flagged"] = flagged_sessions
    summary["session_rate"] = flagged_sessions / n_sessions if n_sessions else None
    summary["session_rate_ci_low"], summary["session_rate_ci_high"] = stats.wilson_interval(flagged_sessions, n_sessions) or (None, None)
    summary["messages_by_flag"] = {flag: int(frame[flag].sum()) for flag in (*MESSAGE_FLAGS, ROLE_BREAK)}
    summary["sessions_by_flag"] = {
        **{flag: int((frame[flag] > 0).sum()) for flag in (*MESSAGE_FLAGS, ROLE_BREAK)},
        ENDED_MID_TASK: int(frame[ENDED_MID_TASK].sum()),
    }
    summary["n_sessions_without_context"] = int((~frame["has_context"].astype(bool)).sum())
    return summary


def contexts_of(session_grounding: Mapping[str, str], contexts: pd.DataFrame) -> dict[str, SimulatorContext]:
    """session → the context of the real session that grounds it (`contexts.context_text` and
    `profile`; absent columns or rows give an empty context, counted as `n_sessions_without_context`)."""
    text_of = dict(zip(contexts["session_id"].astype(str), contexts["context_text"].astype(str))) if "context_text" in contexts else {}
    profile_of = dict(zip(contexts["session_id"].astype(str), contexts["profile"].astype(str))) if "profile" in contexts else {}
    return {
        session_id: SimulatorContext(text=text_of.get(real_id, ""), profile=profile_of.get(real_id, ""))
        for session_id, real_id in session_grounding.items()
    }
