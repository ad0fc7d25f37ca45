"""User goal-state tracking (UGST: Mehri et al., "Goal Alignment in LLM-Based User Simulators for
Conversational AI", §4 and §6; issue #14 item 3): does a user, turn by turn, pursue the goal its
context gave it?

The goal of a session is its context's profile and current-session summary (`dial.contexts`: what
the simulator was told). It is decomposed into sub-components (UGST §4.1), each in one category:

    task_objective   what the user wants to talk about or get from the conversation: the session's
                     topic / situation line and each of the summary's main topics
    user_profile     a persona or background fact of the profile ("age: 34", "problem type: job crisis")
    emotional_state  the feeling or mood the user brings (the summary's tone: negative / positive / mixed)
    preference       something the user should show at least once (the summary's "asks questions",
                     "uses exclamation marks")
    user_policy      a constraint kept throughout (the summary's "asks no questions")

After every user turn (a burst of consecutive user messages is one turn) each sub-component has a
status, updated as UGST §4.2 says:

    task_objective                 incomplete → attempted → complete   ("not yet addressed" →
                                   "in progress" → "addressed"); success: attempted or complete
    user_profile, user_policy      start aligned, switch irreversibly to misaligned when the user
                                   contradicts them ("contradicted"); success: aligned
    emotional_state, preference    start misaligned, become aligned once the user expresses them;
                                   success: aligned

Goal-alignment rate of a session (UGST §6, "success rate" on the final goal state): the share of its
sub-components whose status after the last user turn is a success. A group's rate is the mean over
its sessions [95 % percentile bootstrap over sessions], with n sessions; per category, the share of
its sub-components over all sessions [bootstrap over sessions, clustered], with n sub-components.

Two trackers, chosen by `judge.backend`:

* `RulesGoalTracker` (`rules`, offline, deterministic). Decomposition parses the context as
  `dial.contexts` and `dial.summarise.LocalSummariser` write it: the topic line, "Main topics: …",
  "The user's tone is … (mood words); the user asks (no) questions [and uses exclamation marks].",
  and the profile's "key: value" lines (the line of statistics about earlier conversations is
  left out: it describes message counts and lengths, not a goal). A summary in another form (an
  LLM summariser's) becomes one task objective of its content words. Tracking reads only the
  user's own messages up to that turn, as lower-cased words (a plural matches its singular):
    - a task objective is attempted when the user has used one of its words, complete when at
      least half of them (`COMPLETE_SHARE`; a one-word main topic is complete once used);
    - an emotional state is aligned once the user uses a mood word of its polarity
      (`dial.summarise.NEGATIVE_WORDS` / `POSITIVE_WORDS`, or one the summary names; mixed: either);
    - "asks questions" / "uses exclamation marks" are aligned once a "?" / "!" appears;
      "asks no questions" is misaligned from the first "?";
    - a profile's name, age or gender is misaligned when the user states another one
      (`simulator_errors.profile_contradictions`); every other profile fact stays aligned.
  What the rules cannot see: a topic raised in other words (synonyms, paraphrase, another
  language) or only by the chatbot; whether an objective was pursued or merely named; a feeling
  expressed without a listed mood word, or a mood contradicted ("I'm fine actually" against a
  negative tone is not caught); any profile contradiction other than a stated name, age or gender
  (an event, a relationship, a problem type); a profile value hidden by a PII placeholder. So the
  rules' profile rate is close to 100 % for every group, and their objective rates measure word
  overlap with the summary, which for a real session was written from that session's own words
  (the real users' control row is high by construction, and cut sessions may end before a topic
  the summary drew from later turns).

* `OpenAIGoalTracker` (`openai`): the LLM of `judge.openai` decomposes each context (UGST's prompt
  C.1, with the categories above) and then, in one request per session, gives every sub-component's
  status after every user turn (UGST's prompt D.1 definitions for all categories at once). Replies
  are validated (JSON, categories, one status list per user turn, statuses allowed for the
  category) and re-asked with the problem named up to `judge.max_invalid_replies` times; endpoint
  failures are retried by `dial.openai_client`; validated replies are cached by content hash
  under `<judge.cache_dir>/goals/` (as the issue judge's annotations), so a re-run sends nothing.
  It sees the profile, the summary and the whole transcript (both sides), never a session id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from dial.errors import DialError
from dial.evaluation import simulator_errors, stats
from dial.io import write_json_atomic
from dial.openai_client import EndpointError, chat_completion
from dial.params import JudgeParams
from dial.summarise import FALLBACK_SUMMARY, NEGATIVE_WORDS, POSITIVE_WORDS, content_words, words

log = logging.getLogger(__name__)

TASK_OBJECTIVE, USER_PROFILE, EMOTIONAL_STATE, PREFERENCE, USER_POLICY = (
    "task_objective", "user_profile", "emotional_state", "preference", "user_policy",
)
CATEGORIES = (TASK_OBJECTIVE, USER_PROFILE, EMOTIONAL_STATE, PREFERENCE, USER_POLICY)
INCOMPLETE, ATTEMPTED, COMPLETE, ALIGNED, MISALIGNED = "incomplete", "attempted", "complete", "aligned", "misaligned"
# UGST §4.1-4.2: the statuses each category can have, its initial status, and which count as success (§6).
STATUSES = {
    TASK_OBJECTIVE: (INCOMPLETE, ATTEMPTED, COMPLETE),
    USER_PROFILE: (ALIGNED, MISALIGNED),
    EMOTIONAL_STATE: (ALIGNED, MISALIGNED),
    PREFERENCE: (ALIGNED, MISALIGNED),
    USER_POLICY: (ALIGNED, MISALIGNED),
}
INITIAL_STATUS = {
    TASK_OBJECTIVE: INCOMPLETE, USER_PROFILE: ALIGNED, USER_POLICY: ALIGNED, EMOTIONAL_STATE: MISALIGNED, PREFERENCE: MISALIGNED,
}
SUCCESS = {TASK_OBJECTIVE: (ATTEMPTED, COMPLETE), USER_PROFILE: (ALIGNED,), EMOTIONAL_STATE: (ALIGNED,),
           PREFERENCE: (ALIGNED,), USER_POLICY: (ALIGNED,)}
COMPLETE_SHARE = 0.5  # rules: a task objective is complete once the user has used this share of its words
STATE_COLUMNS = ["session_id", "component_index", "category", "description", "user_turn", "status", "success"]

# How the rules fallback tracks a sub-component (module docstring).
COVERAGE, EXPRESSED, AVOIDED, PROFILE_FIELD, UNSEEN = "coverage", "expressed", "avoided", "profile_field", "unseen"


@dataclass(frozen=True)
class SubComponent:
    """One part of a user goal. `rule`, `cues` and `field` say how the rules fallback tracks it:
    COVERAGE of the `cues` words, a cue EXPRESSED once, a cue AVOIDED throughout, a PROFILE_FIELD
    (name / age / gender) not contradicted, or UNSEEN (keeps its initial status). The LLM tracker
    reads only `category` and `description`."""

    category: str
    description: str
    rule: str = UNSEEN
    cues: tuple[str, ...] = ()  # lower-case words (matched with their singular forms), or marks ("?", "!")
    field: str = ""  # PROFILE_FIELD: "name", "age" or "gender"


@dataclass(frozen=True)
class GoalContext:
    """What a session's user goal is made of: its context's profile and current-session summary."""

    profile: str = ""
    current_summary: str = ""


@dataclass(frozen=True)
class GoalSession:
    """One session to track: its id, its goal and its messages as (role, text) in order."""

    session_id: str
    goal: GoalContext
    messages: tuple[tuple[str, str], ...]

    @property
    def user_turns(self) -> list[str]:
        """The user turns (a burst of consecutive user messages is one turn, joined by newlines)."""
        turns: list[list[str]] = []
        previous = None
        for role, text in self.messages:
            if role == "user":
                if previous != "user":
                    turns.append([])
                turns[-1].append(text)
            previous = role
        return ["\n".join(turn) for turn in turns]


def success(category: str, status: str) -> bool:
    return status in SUCCESS[category]


# --------------------------------------------------------------------------------------------
# The rules fallback
# --------------------------------------------------------------------------------------------


def forms(word: str) -> set[str]:
    """A word and its possible singulars, so that "movies" matches "movie" and "parties" "party"."""
    found = {word}
    if word.endswith("ies") and len(word) > 4:
        found.add(word[:-3] + "y")
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        found.add(word[:-1])
    return found


TOPIC_LINE = re.compile(r"^(?:Conversation prompt \(shown to both speakers\)|The user's situation, in their own words before the chat"
                        r"|Session topic): (.+)$")
MAIN_TOPICS = re.compile(r"Main topics: ([^.\n]*)\.")
TONE = re.compile(r"The user's tone is (negative|positive|mixed|neutral)(?: \(([^)]*)\))?; the user (asks questions|asks no questions)"
                  r"( and uses exclamation marks)?\.")
PROFILE_STATISTICS = ("Earlier conversations:", "No earlier conversations with this user.")


def _profile_field(key: str) -> str:
    key = key.strip().lower().rsplit(".", 1)[-1].replace("_", " ")
    for field_name, keys in (("name", simulator_errors.NAME_KEYS), ("age", simulator_errors.AGE_KEYS),
                             ("gender", simulator_errors.GENDER_KEYS)):
        if key in keys:
            return field_name
    return ""


def decompose_rules(goal: GoalContext) -> list[SubComponent]:
    """The sub-components the rules read from a context (module docstring), in context order:
    topic line, main topics (or the summary's content words), tone, question / exclamation habits,
    profile facts."""
    components: list[SubComponent] = []
    summary = str(goal.current_summary or "")
    body_lines = []
    for line in summary.splitlines():
        topic = TOPIC_LINE.match(line.strip())
        if topic:
            cues = tuple(dict.fromkeys(content_words([topic.group(1)])))
            if cues:
                components.append(SubComponent(TASK_OBJECTIVE, f"talk about: {topic.group(1).strip()}", COVERAGE, cues))
        else:
            body_lines.append(line)
    body = "\n".join(body_lines)
    topics = MAIN_TOPICS.search(body)
    tone = TONE.search(body)
    if topics:
        for word in (w.strip() for w in topics.group(1).split(",")):
            if word:
                components.append(SubComponent(TASK_OBJECTIVE, f"talk about {word}", COVERAGE, (word.lower(),)))
    elif body.strip() and body.strip() != FALLBACK_SUMMARY and not tone:
        # a summary in another form (an LLM summariser's): its content words make one objective
        cues = tuple(dict.fromkeys(content_words([body])))
        if cues:
            components.append(SubComponent(TASK_OBJECTIVE, f"talk about what the summary says: {body.strip()}", COVERAGE, cues))
    if tone:
        mood, named, questions, exclaims = tone.groups()
        named_words = tuple(w.strip() for w in (named or "").split(",") if w.strip())
        if mood != "neutral":
            lexicon = {"negative": NEGATIVE_WORDS, "positive": POSITIVE_WORDS, "mixed": NEGATIVE_WORDS | POSITIVE_WORDS}[mood]
            cues = tuple(sorted(lexicon | set(named_words)))
            description = f"feels {mood}" + (f" ({', '.join(named_words)})" if named_words else "")
            components.append(SubComponent(EMOTIONAL_STATE, description, EXPRESSED, cues))
        if questions == "asks questions":
            components.append(SubComponent(PREFERENCE, "asks questions", EXPRESSED, ("?",)))
        else:
            components.append(SubComponent(USER_POLICY, "asks no questions", AVOIDED, ("?",)))
        if exclaims:
            components.append(SubComponent(PREFERENCE, "uses exclamation marks", EXPRESSED, ("!",)))
    for line in str(goal.profile or "").splitlines():
        line = line.strip()
        key, colon, value = line.partition(":")
        if not colon or not value.strip() or line.startswith(PROFILE_STATISTICS):
            continue
        field_name = _profile_field(key)
        components.append(SubComponent(USER_PROFILE, line, PROFILE_FIELD if field_name else UNSEEN, field=field_name))
    return components


def _shows(cue: str, user_forms: set[str], user_text: str) -> bool:
    return bool(forms(cue) & user_forms) if cue[:1].isalnum() else cue in user_text


def track_rules(components: Sequence[SubComponent], user_turns: Sequence[str], profile: str) -> list[list[str]]:
    """Each sub-component's status after each user turn (module docstring), from the user's own
    messages up to that turn only."""
    states: list[list[str]] = []
    contradicted: set[str] = set()  # profile fields the user has stated otherwise (irreversible)
    said_text = ""
    said_forms: set[str] = set()  # every form of every word the user has written so far
    for turn in user_turns:
        said_text += "\n" + turn
        said_forms |= {form for word in words(turn) for form in forms(word)}
        contradicted |= set(simulator_errors.profile_contradictions(turn, profile))
        statuses = []
        for component in components:
            status = INITIAL_STATUS[component.category]
            if component.rule == COVERAGE:
                covered = sum(_shows(cue, said_forms, said_text) for cue in component.cues)
                if covered and covered >= COMPLETE_SHARE * len(component.cues):
                    status = COMPLETE
                elif covered:
                    status = ATTEMPTED
            elif component.rule == EXPRESSED and any(_shows(cue, said_forms, said_text) for cue in component.cues):
                status = ALIGNED
            elif component.rule == AVOIDED and any(_shows(cue, said_forms, said_text) for cue in component.cues):
                status = MISALIGNED
            elif component.rule == PROFILE_FIELD and component.field in contradicted:
                status = MISALIGNED
            statuses.append(status)
        states.append(statuses)
    return states


class GoalTracker(Protocol):
    name: str

    def states(self, sessions: Sequence[GoalSession]) -> dict[str, tuple[list[SubComponent], list[list[str]]]]:
        """session id → (its sub-components, their statuses after each user turn)."""


class RulesGoalTracker:
    """The offline, deterministic tracker (module docstring)."""

    name = "rules"

    def states(self, sessions: Sequence[GoalSession]) -> dict[str, tuple[list[SubComponent], list[list[str]]]]:
        result = {}
        for session in sessions:
            components = decompose_rules(session.goal)
            result[session.session_id] = (components, track_rules(components, session.user_turns, session.goal.profile))
        return result


# --------------------------------------------------------------------------------------------
# The LLM tracker
# --------------------------------------------------------------------------------------------

PROMPT_VERSION = "goals-prompt-v1"  # bump when a prompt changes: it invalidates the cache
CATEGORY_HELP = """\
- task_objective: what the user wants to talk about or get from the conversation (e.g. talk about the fight with
  their sister, get advice on sleeping)
- user_profile: persona, background, facts about the user (e.g. age: 34, lost their job last month)
- emotional_state: the feeling or mood the user brings into the conversation (e.g. feels anxious and hopeless)
- preference: something the user should show at least once (e.g. asks questions, uses exclamation marks)
- user_policy: a constraint the user keeps throughout the conversation (e.g. asks no questions, reveals little about themselves)"""

DECOMPOSE_INSTRUCTIONS = f"""\
You are an expert annotator tasked with dividing a user's goal into sub-components. The user goal
below is what a simulated user of a mental-health support chatbot is given: their profile and a
summary of the conversation they are to have. Each sub-component belongs to one category:
{CATEGORY_HELP}

Divide the user goal into independent, self-contained sub-components:
- Maintain the same wording as in the original goal when possible.
- Split a sentence into several sub-components when its parts belong to different categories.
- Leave no part of the goal out, except statistics about message counts or lengths.
- A category may be empty.

Reply with one JSON object and nothing else:
{{"sub_components": [{{"category": "<one of: {', '.join(CATEGORIES)}>", "description": "<the sub-component>"}}]}}"""

TRACK_INSTRUCTIONS = """\
You are an expert evaluator analysing a user's behaviour in a conversation with a support CHATBOT.
The user was given a goal, divided into numbered sub-components. After EACH user turn ([U1], [U2],
...), give the status of EVERY sub-component, judging the conversation up to and including that turn.

Statuses by category:
- task_objective: "incomplete" (the user has not yet raised or pursued it), "attempted" (the user has
  begun to pursue it, or made a sufficient attempt that the chatbot did not take further), "complete"
  (the user has fully raised and pursued it). It starts incomplete and only moves forward.
- user_profile, user_policy: "aligned" unless the user DIRECTLY contradicts the sub-component, or the
  conversation clearly calls for showing it and the user fails in a way unrealistic for this user:
  then "misaligned", and it stays misaligned for every later turn. Most turns need not show the
  profile: unless there is a clear contradiction or an obvious missed opportunity, lean towards "aligned".
- emotional_state, preference: "misaligned" until the user expresses it (explicitly or implicitly),
  "aligned" from then on.

Reply with one JSON object and nothing else, one entry per user turn in order, each with one status
per sub-component in the sub-components' order:
{"turns": [{"user_turn": 1, "statuses": ["<status of sub-component 1>", "<status of sub-component 2>", ...]}]}"""

RETRY_PROMPT = "Your reply is invalid: {problem}. Reply again with the complete JSON object only, following the instructions."


class InvalidGoalReply(ValueError):
    """An LLM reply that is not a valid decomposition or goal state."""


def _json_object(reply: str) -> dict:
    from dial.evaluation.judges.openai import InvalidReply, _extract_json  # the issue judge's reading of a reply

    try:
        payload = _extract_json(reply)
    except InvalidReply as exc:
        raise InvalidGoalReply(str(exc)) from None
    if not isinstance(payload, dict):
        raise InvalidGoalReply("the reply must be a JSON object")
    return payload


def parse_decomposition(reply: str) -> list[SubComponent]:
    """Validate a decomposition reply; raises `InvalidGoalReply` naming the first problem."""
    payload = _json_object(reply)
    entries = payload.get("sub_components")
    if set(payload) != {"sub_components"} or not isinstance(entries, list):
        raise InvalidGoalReply(f'the object must have exactly the key "sub_components" with a list (got {sorted(payload)})')
    components = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("description"), str) or not entry["description"].strip():
            raise InvalidGoalReply(f"sub_components[{k}] must be an object with a non-empty description")
        category = str(entry.get("category", "")).strip().lower().replace(" ", "_")
        if category not in CATEGORIES:
            raise InvalidGoalReply(f"sub_components[{k}]: unknown category {entry.get('category')!r} (expected one of {', '.join(CATEGORIES)})")
        components.append(SubComponent(category, " ".join(entry["description"].split())))
    return components


def parse_goal_states(reply: str, components: Sequence[SubComponent], n_user_turns: int) -> list[list[str]]:
    """Validate a tracking reply: one status list per user turn, one status per sub-component,
    each allowed for its category. Raises `InvalidGoalReply` naming the first problem."""
    payload = _json_object(reply)
    turns = payload.get("turns")
    if set(payload) != {"turns"} or not isinstance(turns, list):
        raise InvalidGoalReply(f'the object must have exactly the key "turns" with a list (got {sorted(payload)})')
    if len(turns) != n_user_turns:
        raise InvalidGoalReply(f"expected {n_user_turns} user turns, got {len(turns)}")
    states = []
    for i, entry in enumerate(turns):
        statuses = entry.get("statuses") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("user_turn") != i + 1 or not isinstance(statuses, list):
            raise InvalidGoalReply(f"turns[{i}] must be {{\"user_turn\": {i + 1}, \"statuses\": [...]}}")
        if len(statuses) != len(components):
            raise InvalidGoalReply(f"turns[{i}]: expected {len(components)} statuses, got {len(statuses)}")
        clean = []
        for j, (status, component) in enumerate(zip(statuses, components)):
            status = str(status).strip().lower()
            if status not in STATUSES[component.category]:
                raise InvalidGoalReply(
                    f"turns[{i}].statuses[{j}]: {status!r} is not a status of a {component.category} "
                    f"(expected one of {', '.join(STATUSES[component.category])})"
                )
            clean.append(status)
        states.append(clean)
    return states


def decomposition_prompt(goal: GoalContext) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DECOMPOSE_INSTRUCTIONS},
        {"role": "user", "content": f"# User goal\n## User profile\n{goal.profile.strip()}\n\n## This session\n{goal.current_summary.strip()}"},
    ]


def tracking_prompt(components: Sequence[SubComponent], session: GoalSession) -> list[dict[str, str]]:
    lines = ["SUB-COMPONENTS"] + [f"{j + 1}. [{c.category}] {c.description}" for j, c in enumerate(components)]
    lines += ["", "CONVERSATION"]
    n_turn, previous = 0, None
    for role, text in session.messages:
        body = "\n    ".join(str(text).strip().splitlines())
        if role == "user":
            if previous != "user":
                n_turn += 1
            lines.append(f"[U{n_turn}] USER: {body}")
        else:
            lines.append(f"CHATBOT: {body}")
        previous = role
    return [{"role": "system", "content": TRACK_INSTRUCTIONS}, {"role": "user", "content": "\n".join(lines)}]


class OpenAIGoalTracker:
    """UGST by the LLM of `judge.openai` (module docstring)."""

    def __init__(self, params: JudgeParams) -> None:
        if not params.openai.model:
            raise DialError("goal tracking: judge.openai.model is empty")
        self.endpoint = params.openai
        self.max_invalid_replies = params.max_invalid_replies
        self.cache_dir = Path(params.cache_dir) / "goals"
        self.name = f"openai:{self.endpoint.model}"
        self.requests = 0  # sent, re-asks included (a cached reply sends none)
        self._lock = threading.Lock()

    def _cache_path(self, messages: list[dict[str, str]]) -> Path:
        shaping = {"prompt_version": PROMPT_VERSION, "model": self.endpoint.model, "temperature": self.endpoint.temperature,
                   "max_tokens": self.endpoint.max_tokens, "seed": self.endpoint.seed, "messages": messages}
        key = hashlib.sha256(json.dumps(shaping, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _ask(self, messages: list[dict[str, str]], parse, what: str):
        """The parsed reply: from the cache, else asked (re-asked on an invalid reply) and cached."""
        path = self._cache_path(messages)
        if path.exists():
            try:
                return parse(json.loads(path.read_text(encoding="utf-8"))["reply"])
            except (ValueError, KeyError, TypeError) as exc:  # a damaged entry is asked again, never trusted
                log.warning("goal cache %s is unreadable (%s): asking again", path, exc)
        conversation, problem = list(messages), ""
        for attempt in range(self.max_invalid_replies + 1):
            with self._lock:
                self.requests += 1
            try:
                completion = chat_completion(
                    self.endpoint.base_url, self.endpoint.model, conversation, api_key_env=self.endpoint.api_key_env or None,
                    timeout_s=self.endpoint.timeout_s, max_retries=self.endpoint.max_retries,
                    temperature=self.endpoint.temperature, max_tokens=self.endpoint.max_tokens, seed=self.endpoint.seed, what=what,
                )
            except EndpointError as exc:
                raise DialError(f"{what}: {exc.detail}") from exc
            try:
                parsed = parse(completion.text)
            except InvalidGoalReply as exc:
                problem = str(exc)
                log.warning("%s: invalid reply %d/%d: %s", what, attempt + 1, self.max_invalid_replies + 1, problem)
                conversation = messages + [{"role": "assistant", "content": completion.text},
                                           {"role": "user", "content": RETRY_PROMPT.format(problem=problem)}]
                continue
            write_json_atomic(path, {"prompt_version": PROMPT_VERSION, "model": self.endpoint.model, "reply": completion.text})
            return parsed
        raise DialError(f"{what}: no valid reply after {self.max_invalid_replies + 1} replies; last problem: {problem}")

    def decompose(self, goal: GoalContext) -> list[SubComponent]:
        return self._ask(decomposition_prompt(goal), parse_decomposition, f"goal decomposition ({self.name})")

    def track(self, components: Sequence[SubComponent], session: GoalSession) -> list[list[str]]:
        n_turns = len(session.user_turns)
        if not n_turns or not components:
            return [[INITIAL_STATUS[c.category] for c in components] for _ in range(n_turns)]
        return self._ask(tracking_prompt(components, session), lambda reply: parse_goal_states(reply, components, n_turns),
                         f"goal tracking ({self.name})")

    def states(self, sessions: Sequence[GoalSession]) -> dict[str, tuple[list[SubComponent], list[list[str]]]]:
        goals = list(dict.fromkeys(session.goal for session in sessions))  # one decomposition per context
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency, thread_name_prefix="goals") as pool:
            decomposed = dict(zip(goals, pool.map(self.decompose, goals)))
            tracked = list(pool.map(lambda s: self.track(decomposed[s.goal], s), sessions))
        return {s.session_id: (decomposed[s.goal], states) for s, states in zip(sessions, tracked)}


def build_goal_tracker(params: JudgeParams) -> GoalTracker:
    """The tracker of `judge.backend`: the LLM's with `openai`, the rules otherwise."""
    return OpenAIGoalTracker(params) if params.backend == "openai" else RulesGoalTracker()


# --------------------------------------------------------------------------------------------
# Goal states of a group's sessions, and their rates
# --------------------------------------------------------------------------------------------


def goal_sessions(messages: pd.DataFrame, goals: Mapping[str, GoalContext], session_ids: Sequence[str]) -> list[GoalSession]:
    """The sessions to track, each with the goal of the real session that grounds it (`goals`:
    session → goal; a session without one gets an empty goal, hence no sub-component)."""
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    by_session = {str(sid): tuple(zip(g["role"], g["text"].astype(str))) for sid, g in ordered.groupby("session_id", sort=True)}
    return [GoalSession(sid, goals.get(sid, GoalContext()), by_session.get(sid, ())) for sid in sorted(map(str, session_ids))]


def goals_of(session_grounding: Mapping[str, str], contexts: pd.DataFrame) -> dict[str, GoalContext]:
    """session → the goal (profile, current-session summary) of the real session that grounds it."""
    profile_of = dict(zip(contexts["session_id"].astype(str), contexts["profile"].astype(str))) if "profile" in contexts else {}
    summary_of = (dict(zip(contexts["session_id"].astype(str), contexts["current_summary"].astype(str)))
                  if "current_summary" in contexts else {})
    return {
        sid: GoalContext(profile=profile_of.get(real, ""), current_summary=summary_of.get(real, ""))
        for sid, real in session_grounding.items()
        if real in profile_of or real in summary_of
    }


def group_goal_states(
    sessions: pd.DataFrame, messages: pd.DataFrame, simulations: pd.DataFrame | None, contexts: pd.DataFrame, tracker: GoalTracker
) -> pd.DataFrame:
    """`goal_states` of one group's sessions, each against the goal of the real session that
    grounds it (`simulations.real_session_id`; a real session, simulations None: its own)."""
    ids = sorted(set(sessions["session_id"].astype(str)))
    if simulations is None:
        grounding = {sid: sid for sid in ids}
    else:
        real_of = dict(zip(simulations["session_id"].astype(str), simulations["real_session_id"].astype(str)))
        grounding = {sid: real_of[sid] for sid in ids if sid in real_of}
    own = messages[messages["session_id"].astype(str).isin(set(ids))]
    return goal_states(goal_sessions(own, goals_of(grounding, contexts), ids), tracker)


def goal_states(sessions: Sequence[GoalSession], tracker: GoalTracker) -> pd.DataFrame:
    """STATE_COLUMNS rows: every sub-component's status at user turn 0 (the initial state, UGST's
    S_0) and after each user turn, for every session."""
    rows = []
    tracked = tracker.states(sessions)
    for session in sessions:
        components, states = tracked[session.session_id]
        initial = [INITIAL_STATUS[c.category] for c in components]
        for turn, statuses in enumerate([initial, *states]):
            for j, (component, status) in enumerate(zip(components, statuses)):
                rows.append({"session_id": session.session_id, "component_index": j, "category": component.category,
                             "description": component.description, "user_turn": turn, "status": status,
                             "success": success(component.category, status)})
    return pd.DataFrame(rows, columns=STATE_COLUMNS)


def final_states(states: pd.DataFrame) -> pd.DataFrame:
    """Each sub-component's status after the session's last user turn (UGST's S_n)."""
    last = states.groupby("session_id")["user_turn"].transform("max")
    return states[states["user_turn"] == last].reset_index(drop=True)


def summarise(states: pd.DataFrame, session_ids: Sequence[str], n_resamples: int, seed: int, label: str, tracker: str) -> dict:
    """A group's goal-alignment rates (module docstring): `rate` (mean over sessions of the share
    of successful sub-components) [95 % bootstrap over sessions] with `n_sessions`, and per
    category the share of its sub-components [clustered bootstrap] with `n` sub-components.
    Sessions whose goal has no sub-component are left out and counted."""
    final = final_states(states)
    per_session = final.groupby("session_id")["success"].agg(["sum", "count"]).reindex(sorted(map(str, session_ids)))
    tracked = per_session.dropna()
    k, n = tracked["sum"].to_numpy(dtype=np.float64), tracked["count"].to_numpy(dtype=np.float64)
    weights = stats.resample_weights(len(tracked), n_resamples, stats.stable_rng(seed, "goals", label))
    session_rates = k / n if len(n) else np.zeros(0)
    rate = float(session_rates.mean()) if len(session_rates) else None
    interval = stats.percentile_interval(weights @ session_rates / len(session_rates)) if len(session_rates) else None
    summary = {
        "tracker": tracker,
        "rate": rate,
        "rate_ci_low": interval[0] if interval else None,
        "rate_ci_high": interval[1] if interval else None,
        "n_sessions": int(len(tracked)),
        "n_sessions_without_goal": int(len(per_session) - len(tracked)),
        "n_components": int(n.sum()),
        "categories": {},
    }
    ids = list(tracked.index)
    for category in CATEGORIES:
        own = final[final["category"] == category]
        if own.empty:
            continue
        counts = own.groupby("session_id")["success"].agg(["sum", "count"]).reindex(ids, fill_value=0)
        k_c, n_c = counts["sum"].to_numpy(dtype=np.float64), counts["count"].to_numpy(dtype=np.float64)
        category_interval = stats.percentile_interval(stats.ratio_replicates(weights, k_c, n_c))
        summary["categories"][category] = {
            "rate": float(k_c.sum() / n_c.sum()),
            "rate_ci_low": category_interval[0] if category_interval else None,
            "rate_ci_high": category_interval[1] if category_interval else None,
            "k": int(k_c.sum()),
            "n": int(n_c.sum()),
            "n_sessions": int((n_c > 0).sum()),
            "statuses": {status: int((own["status"] == status).sum()) for status in STATUSES[category]},
        }
    return summary
