"""User goal-state tracking (UGST): the rules fallback's decomposition and per-turn statuses on
hand-written sessions, the alignment rates worked out by hand, and the LLM tracker against a
canned OpenAI-compatible server (validation, re-asking, cache)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from dial import io, openai_client
from dial.errors import DialError
from dial.evaluation import goals
from dial.evaluation.goals import (
    ALIGNED, ATTEMPTED, COMPLETE, EMOTIONAL_STATE, INCOMPLETE, MISALIGNED, PREFERENCE, TASK_OBJECTIVE, USER_POLICY,
    USER_PROFILE, GoalContext, GoalSession, InvalidGoalReply, OpenAIGoalTracker, RulesGoalTracker, SubComponent,
    decompose_rules, goal_states, parse_goal_states, summarise,
)
from dial.params import JudgeEndpointParams, JudgeParams

SUMMARY = (
    "Conversation prompt (shown to both speakers): What is your favorite movie?\n"
    "Main topics: work, sister. The user's tone is negative (tired); the user asks no questions."
)
PROFILE = "age: 30\ngender: female\nhobby: chess\nEarlier conversations: 2; about 5 messages per conversation, 9 words per message; 10% of messages are questions."
GOAL = GoalContext(profile=PROFILE, current_summary=SUMMARY)


def session(*lines: str, goal: GoalContext = GOAL, session_id: str = "s") -> GoalSession:
    """A session from "u: ..." / "a: ..." lines."""
    return GoalSession(session_id, goal, tuple(("user" if line[0] == "u" else "assistant", line[3:]) for line in lines))


def test_the_rules_decompose_topic_main_topics_tone_habits_and_profile_but_not_the_statistics():
    found = [(c.category, c.description) for c in decompose_rules(GOAL)]
    assert found == [
        (TASK_OBJECTIVE, "talk about: What is your favorite movie?"),
        (TASK_OBJECTIVE, "talk about work"),
        (TASK_OBJECTIVE, "talk about sister"),
        (EMOTIONAL_STATE, "feels negative (tired)"),
        (USER_POLICY, "asks no questions"),
        (USER_PROFILE, "age: 30"),
        (USER_PROFILE, "gender: female"),
        (USER_PROFILE, "hobby: chess"),
    ]
    assert decompose_rules(GoalContext()) == []


def test_an_objective_becomes_complete_when_the_user_raises_it_and_never_from_the_chatbots_words():
    tracker = RulesGoalTracker()
    played = session("u: hi", "a: Do you like your work? Tell me about your sister and movies.",
                     "u: my sister and i argue", "u: she hates my favourite movies", "a: ok", "u: work is fine")
    components, states = tracker.states([played])["s"]
    assert [c.description for c in components[:3]] == ["talk about: What is your favorite movie?", "talk about work", "talk about sister"]
    assert len(states) == 3  # the burst of two user messages is one turn
    # turn 1: nothing raised, although the chatbot named every topic
    assert states[0][:3] == [INCOMPLETE, INCOMPLETE, INCOMPLETE]
    # turn 2: "sister" raised; "movies" stems to "movie", 1 of the prompt's 2 content words (favorite, movie): complete at half
    assert states[1][:3] == [COMPLETE, INCOMPLETE, COMPLETE]
    assert states[2][:3] == [COMPLETE, COMPLETE, COMPLETE]


def test_an_objective_with_few_of_its_words_used_is_attempted():
    goal = GoalContext(current_summary="The user's situation, in their own words before the chat: lost my job and my landlord wants rent")
    (component,) = decompose_rules(goal)
    assert component.cues == ("lost", "job", "landlord", "wants", "rent")
    _, states = RulesGoalTracker().states([session("u: i lost it", "a: what?", "u: the job, the rent", goal=goal)])["s"]
    assert states == [[ATTEMPTED], [COMPLETE]]  # 1 of 5 words, then 3 of 5


def test_the_emotional_state_is_aligned_once_expressed_and_a_question_breaks_the_no_question_policy_for_good():
    _, states = RulesGoalTracker().states([session("u: hello", "a: hi", "u: so tired lately", "a: why?", "u: why not? ok")])["s"]
    emotional, policy = [row[3] for row in states], [row[4] for row in states]
    assert emotional == [MISALIGNED, ALIGNED, ALIGNED]
    assert policy == [ALIGNED, ALIGNED, MISALIGNED]
    preference = decompose_rules(GoalContext(current_summary="The user's tone is neutral; the user asks questions and uses exclamation marks."))
    assert [(c.category, c.description) for c in preference] == [(PREFERENCE, "asks questions"), (PREFERENCE, "uses exclamation marks")]
    _, states = RulesGoalTracker().states([session("u: yes!", "a: ok", "u: and you?", goal=GoalContext(current_summary=(
        "The user's tone is neutral; the user asks questions and uses exclamation marks.")))])["s"]
    assert states == [[MISALIGNED, ALIGNED], [ALIGNED, ALIGNED]]


def test_a_stated_age_or_gender_against_the_profile_is_contradicted_from_then_on_and_other_facts_stay_aligned():
    _, states = RulesGoalTracker().states([session("u: i'm 30 years old", "a: ok", "u: i'm a guy who hates chess", "a: ok", "u: bye")])["s"]
    age, gender, hobby = ([row[k] for row in states] for k in (5, 6, 7))
    assert age == [ALIGNED, ALIGNED, ALIGNED]  # 30 is the profile's age
    assert gender == [ALIGNED, MISALIGNED, MISALIGNED]  # "a guy" against female, irreversibly
    assert hobby == [ALIGNED, ALIGNED, ALIGNED]  # "hates chess" is a contradiction the rules cannot see


def test_a_summary_in_another_form_is_one_objective_of_its_content_words():
    (component,) = decompose_rules(GoalContext(current_summary="The user wants advice about sleeping badly before exams."))
    assert component.category == TASK_OBJECTIVE and component.cues == ("user", "wants", "advice", "sleeping", "badly", "exams")
    assert decompose_rules(GoalContext(current_summary="Session summary unavailable.")) == []  # the summariser's fallback says nothing


def test_goal_states_are_deterministic_and_start_from_the_initial_state():
    sessions = [session("u: my sister is tired", "a: ok", session_id="b"), session(session_id="a")]
    first, second = goal_states(sessions, RulesGoalTracker()), goal_states(sessions, RulesGoalTracker())
    pd.testing.assert_frame_equal(first, second)
    io.GOAL_STATES.validate(first.assign(group="real", tracker="rules"))  # the artifact's schema knows every category and status
    initial = first[first["user_turn"] == 0]
    assert list(initial.loc[initial["session_id"] == "a", "status"]) == [
        INCOMPLETE, INCOMPLETE, INCOMPLETE, MISALIGNED, ALIGNED, ALIGNED, ALIGNED, ALIGNED]
    assert first["user_turn"].max() == 1 and set(first.loc[first["session_id"] == "a", "user_turn"]) == {0}


def states_frame(rows):
    """STATE_COLUMNS rows of final states from (session, category, success) triples."""
    return pd.DataFrame([
        {"session_id": s, "component_index": j, "category": c, "description": "d", "user_turn": 1,
         "status": COMPLETE if ok else INCOMPLETE, "success": ok}
        for j, (s, c, ok) in enumerate(rows)
    ], columns=goals.STATE_COLUMNS)


def test_the_rate_is_the_mean_over_sessions_of_their_shares_and_categories_pool_their_components():
    frame = states_frame([
        ("s1", TASK_OBJECTIVE, True), ("s1", TASK_OBJECTIVE, False), ("s1", USER_PROFILE, True), ("s1", USER_PROFILE, True),
        ("s2", TASK_OBJECTIVE, False), ("s2", USER_PROFILE, True),
    ])
    summary = summarise(frame, ["s1", "s2", "s3"], n_resamples=200, seed=0, label="g", tracker="rules")
    assert summary["rate"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # not the pooled 4 / 6
    assert (summary["n_sessions"], summary["n_sessions_without_goal"], summary["n_components"]) == (2, 1, 6)
    assert 1 / 2 <= summary["rate_ci_low"] <= summary["rate"] <= summary["rate_ci_high"] <= 3 / 4
    objectives = summary["categories"][TASK_OBJECTIVE]
    assert (objectives["rate"], objectives["k"], objectives["n"], objectives["n_sessions"]) == (1 / 3, 1, 3, 2)
    assert summary["categories"][USER_PROFILE]["rate"] == 1.0 and EMOTIONAL_STATE not in summary["categories"]
    again = summarise(frame, ["s1", "s2", "s3"], n_resamples=200, seed=0, label="g", tracker="rules")
    assert again == summary


def test_only_the_final_state_counts():
    frame = pd.concat([states_frame([("s1", TASK_OBJECTIVE, False)]).assign(user_turn=0),
                       states_frame([("s1", TASK_OBJECTIVE, True)]).assign(user_turn=2)], ignore_index=True)
    assert summarise(frame, ["s1"], n_resamples=100, seed=0, label="g", tracker="rules")["rate"] == 1.0


# --------------------------------------------------------------------------------------------
# The LLM tracker against a canned endpoint


class CannedEndpoint:
    """An OpenAI-compatible /chat/completions in a thread: replies by the first rule whose text is
    in the request's second message; keeps every request body."""

    def __init__(self, rules: list[tuple[str, list[str]]]) -> None:
        self.rules, self.bodies, self.seen = rules, [], {}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.bodies.append(body)
                prompt = body["messages"][1]["content"]
                contains, replies = next(rule for rule in endpoint.rules if rule[0] in prompt)
                n = endpoint.seen.get(contains, 0)
                endpoint.seen[contains] = n + 1
                data = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": replies[min(n, len(replies) - 1)]}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


DECOMPOSITION = json.dumps({"sub_components": [
    {"category": "task_objective", "description": "talk about the fight with their sister"},
    {"category": "User Profile", "description": "is 30 years old"},
]})
BAD_STATES = json.dumps({"turns": [{"user_turn": 1, "statuses": ["done", "aligned"]}, {"user_turn": 2, "statuses": ["complete", "aligned"]}]})
STATES = "```json\n" + json.dumps({"turns": [{"user_turn": 1, "statuses": ["incomplete", "aligned"]},
                                            {"user_turn": 2, "statuses": ["complete", "misaligned"]}]}) + "\n```"


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setattr(openai_client, "BACKOFF_BASE_S", 0.01)
    server = CannedEndpoint([("## This session", [DECOMPOSITION]), ("CONVERSATION", [BAD_STATES, STATES])])
    yield server
    server.server.shutdown()


def tracker_params(url: str, cache_dir) -> JudgeParams:
    return JudgeParams(backend="openai", cache_dir=str(cache_dir), max_invalid_replies=1,
                       openai=JudgeEndpointParams(base_url=url, model="goal-llm", api_key_env="", timeout_s=10, max_retries=0))


def test_the_llm_decomposes_and_tracks_reasks_an_invalid_reply_and_caches(endpoint, tmp_path):
    played = session("u: hi", "a: hello", "u: my sister and i fought", "u: i am 12", session_id="sim:sft:x")
    tracker = goals.build_goal_tracker(tracker_params(endpoint.url, tmp_path))
    assert isinstance(tracker, OpenAIGoalTracker) and tracker.name == "openai:goal-llm"
    components, states = tracker.states([played])["sim:sft:x"]
    assert [(c.category, c.description) for c in components] == [
        (TASK_OBJECTIVE, "talk about the fight with their sister"), (USER_PROFILE, "is 30 years old")]
    assert states == [[INCOMPLETE, ALIGNED], [COMPLETE, MISALIGNED]]
    assert tracker.requests == 3  # decomposition, an invalid state reply re-asked once
    retry = endpoint.bodies[-1]["messages"]
    assert "'done' is not a status of a task_objective" in retry[-1]["content"] and retry[-2]["content"] == BAD_STATES
    tracking_prompt = endpoint.bodies[1]["messages"][1]["content"]
    assert "[U2] USER: my sister and i fought\n[U2] USER: i am 12" in tracking_prompt and "CHATBOT: hello" in tracking_prompt
    assert all("sim:sft" not in json.dumps(body) for body in endpoint.bodies)  # blind: no session id
    # a re-run is read from the cache: no request
    again = goals.build_goal_tracker(tracker_params(endpoint.url, tmp_path))
    assert again.states([played]) == {"sim:sft:x": (components, states)} and again.requests == 0
    assert len(endpoint.bodies) == 3


def test_goal_state_replies_are_validated():
    components = [SubComponent(TASK_OBJECTIVE, "x"), SubComponent(USER_PROFILE, "y")]
    with pytest.raises(InvalidGoalReply, match="expected 2 user turns"):
        parse_goal_states('{"turns": [{"user_turn": 1, "statuses": ["complete", "aligned"]}]}', components, 2)
    with pytest.raises(InvalidGoalReply, match="expected 2 statuses"):
        parse_goal_states('{"turns": [{"user_turn": 1, "statuses": ["complete"]}]}', components, 1)
    with pytest.raises(InvalidGoalReply, match="not a status of a user_profile"):
        parse_goal_states('{"turns": [{"user_turn": 1, "statuses": ["complete", "complete"]}]}', components, 1)


def test_the_llm_tracker_stops_naming_the_problem_after_invalid_replies(tmp_path, monkeypatch):
    monkeypatch.setattr(openai_client, "BACKOFF_BASE_S", 0.01)
    server = CannedEndpoint([("## This session", ["I think the goal is to vent."])])
    try:
        tracker = OpenAIGoalTracker(tracker_params(server.url, tmp_path))
        with pytest.raises(DialError, match="goal decomposition .* no valid reply after 2 replies; last problem: no JSON object"):
            tracker.states([session("u: hi")])
    finally:
        server.server.shutdown()
