"""The simulation engine: lockstep batched rollouts, stop reasons, guardrails, seeds, resume."""

import json

import pandas as pd
import pytest

from dial import io, paths
from dial.chatbots import Chatbot, ChatbotError, ChatReply
from dial.chatbots.replay import ReplayChatbot
from dial.simulation.generation import Generated
from dial.params import ChatbotParams, DecodingParams, GuardrailParams, SimulateParams
from dial.schemas import is_truncated
from dial.simulation.simulate import (
    Simulation,
    SessionState,
    guardrail_failures,
    plan_sessions,
    run_simulate,
    select_contexts,
    to_frames,
    truncation_report,
)

END = "<|endconversation|>"
SEP = "<|msg|>"


# --- a tiny real corpus on disk -------------------------------------------------------------------


def corpus(n_users: int = 6):
    sessions, messages, contexts, splits = [], [], [], []
    for u in range(n_users):
        user = f"u{u}"
        splits.append({"user_id": user, "split": "test" if u % 2 == 0 else "train"})
        for k in range(2):
            sid = f"{user}-s{k}"
            sessions.append({"session_id": sid, "user_id": user, "source": "test", "session_index": k,
                             "started_at": None, "chatbot_id": None, "topic": "sleep", "metadata": "{}"})
            turns = [("user", f"hi i am {user}"), ("assistant", f"hello {user}, how are you"), ("user", "tired today")]
            if u == 4 and k == 1:
                turns = [("user", "anyone there?")]  # never answered: not a valid grounding session
            for t, (role, text) in enumerate(turns):
                messages.append({"session_id": sid, "turn_index": t, "role": role, "text": text, "timestamp": None, "metadata": "{}"})
            contexts.append({"session_id": sid, "user_id": user, "instruction": "be the user", "profile": "{}", "long_term": "",
                             "previous_summaries": "[]", "current_summary": "The user talks about feeling tired at work.",
                             "recent_history": "[]", "context_text": f"You are user {user}. They feel tired.", "n_tokens": 12,
                             "n_previous_summaries_dropped": 0, "n_history_messages_dropped": 0, "long_term_dropped": False})
    return pd.DataFrame(sessions), pd.DataFrame(messages), pd.DataFrame(contexts), pd.DataFrame(splits)


@pytest.fixture
def project(tmp_path):
    sessions, messages, contexts, splits = corpus()
    scrubbed = tmp_path / "scrubbed"
    scrubbed.mkdir()
    io.SESSIONS.write(sessions, paths.sessions_file(scrubbed))
    io.MESSAGES.write(messages, paths.messages_file(scrubbed))
    io.CONTEXTS.write(contexts, tmp_path / "contexts.parquet")
    io.SPLITS.write(splits, tmp_path / "splits.parquet")
    return tmp_path


def test_contexts_come_from_answered_test_split_sessions_only():
    sessions, messages, contexts, splits = corpus()
    selected = select_contexts(contexts, sessions, messages, splits, SimulateParams(n_contexts=100))
    assert set(selected["user_id"]) == {"u0", "u2", "u4"}
    assert "u4-s1" not in set(selected["session_id"])  # unanswered
    few = select_contexts(contexts, sessions, messages, splits, SimulateParams(n_contexts=2, seed=3))
    assert len(few) == 2 and few.equals(select_contexts(contexts, sessions, messages, splits, SimulateParams(n_contexts=2, seed=3)))


def test_plan_is_contexts_times_simulations_times_chatbots_with_paired_seeds():
    sessions, messages, contexts, splits = corpus()
    selected = select_contexts(contexts, sessions, messages, splits, SimulateParams(n_contexts=3))
    params = SimulateParams(n_simulations=2)
    zero = plan_sessions(selected, ["a", "b"], "zero-shot", params)
    sft = plan_sessions(selected, ["a", "b"], "sft", params)
    assert len(zero) == 3 * 2 * 2 and len({s.seed for s in zero}) == len(zero)
    assert [s.seed for s in zero] == [s.seed for s in sft]  # simulators face the same conditions


# --- the engine with scripted policies (no model): stop reasons and batching ----------------------


class ScriptedSimulator:
    """Stands in for ChatGenerator: replies from a script per context, records every call."""

    def __init__(self, script):
        self.script = script  # function(conversation, attempt) -> text
        self.calls = []

    def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
        self.calls.append(len(conversations))
        return [Generated(text=self.script(conv), n_tokens=3, hit_max_tokens=False) for conv in conversations]

    def forget(self, keys=None):
        pass


class CountingChatbot(Chatbot):
    def __init__(self, name, end_after=None):
        self.name, self.end_after, self.calls = name, end_after, []

    def reply(self, requests):
        self.calls.append(len(requests))
        out = []
        for request in requests:
            n = sum(m["role"] == "assistant" for m in request.messages)
            out.append(ChatReply(text=None if self.end_after is not None and n >= self.end_after else f"reply {n}"))
        return out


def states(n, chatbot="bot"):
    return [SessionState(session_id=f"s{i}", real_session_id=f"r{i}", real_user_id="u", chatbot_id=chatbot, simulation_index=0,
                         seed=i, context_text=f"ctx {i}", current_summary="the user is tired at work today", topic=None)
            for i in range(n)]


def user_turns(conversation):
    return sum(m["role"] == "assistant" for m in conversation)  # flipped: the simulator's own turns


def test_lockstep_one_batched_call_per_round_and_stop_reasons():
    def script(conv):
        ctx = conv[0]["content"]
        if ctx == "ctx 0" and user_turns(conv) == 1:
            return f"ok bye {END}"  # ends with a last message
        if ctx == "ctx 1":
            return f"fine {END}" if user_turns(conv) == 0 else "unreachable"  # ends in its first turn, after a message
        return f"message {user_turns(conv)}"

    simulator = ScriptedSimulator(script)
    bots = [CountingChatbot("bot"), CountingChatbot("early", end_after=1)]
    sessions = states(4) + states(1, chatbot="early")
    sessions[-1].session_id, sessions[-1].context_text = "s-early", "ctx early"
    Simulation(simulator, bots, SimulateParams(max_turns=3, batch_size=10)).run(sessions, progress=False)
    by_id = {s.session_id: s for s in sessions}
    assert by_id["s0"].stop_reason == "user_ended" and by_id["s0"].history[-1] == ("user", "ok bye")
    assert by_id["s1"].stop_reason == "user_ended" and by_id["s1"].history == [("user", "fine")]
    assert by_id["s2"].stop_reason == "max_turns" and by_id["s2"].n_user_messages == 3
    assert by_id["s2"].history[-1][0] == "assistant"  # the chatbot answers the last user message
    assert by_id["s-early"].stop_reason == "chatbot_ended"
    # Lockstep: one simulator call per round with every active session; finished ones leave.
    assert simulator.calls == [5, 4, 2]
    assert bots[0].calls == [3, 2, 2] and bots[1].calls == [1, 1]


def test_empty_messages_are_retried_then_stop_the_session():
    attempts = []

    def script(conv):
        attempts.append(1)
        return "   "

    sessions = states(1)
    Simulation(ScriptedSimulator(script), [CountingChatbot("bot")], SimulateParams(max_turns=3)).run(sessions, progress=False)
    assert sessions[0].stop_reason == "empty_message" and len(attempts) == 3  # 1 + 2 retries


def test_ending_before_saying_anything_is_retried_then_kept_and_flagged():
    texts = iter([END, f" {END} ", "hi there", "ok", END])
    sessions = states(1)
    Simulation(ScriptedSimulator(lambda conv: next(texts)), [CountingChatbot("bot")], SimulateParams(max_turns=3)).run(sessions, progress=False)
    state = sessions[0]
    # The silent endings of the first turn are resampled; a bare ending after a message is a real ending.
    assert state.history == [("user", "hi there"), ("assistant", "reply 0"), ("user", "ok"), ("assistant", "reply 1")]
    assert state.stop_reason == "user_ended" and state.guardrail_flagged == 0

    always_silent = states(1)
    Simulation(ScriptedSimulator(lambda conv: END), [CountingChatbot("bot")], SimulateParams(max_turns=3)).run(always_silent, progress=False)
    assert always_silent[0].history == [] and always_silent[0].stop_reason == "user_ended"
    assert always_silent[0].guardrail_flagged == 1  # kept after the retries, and flagged


def test_guardrails_regenerate_then_keep_and_flag():
    texts = iter(["Hello there friend", "ok", "i am so tired at work", "nothing new", "nothing new", "nothing new", "nothing new"])
    guard = GuardrailParams(enabled=True, forbidden_first_tokens=["hello"], min_words=2, max_retries=3)
    sessions = states(1)
    simulation = Simulation(ScriptedSimulator(lambda conv: next(texts)), [CountingChatbot("bot")], SimulateParams(max_turns=2, guardrails=guard))
    simulation.run(sessions, progress=False)
    state = sessions[0]
    # Turn 1: "Hello..." (forbidden first token) and "ok" (too short) are regenerated.
    assert state.history[0] == ("user", "i am so tired at work")
    # Turn 2: "nothing new" passes (no earlier repeat)... then is kept.
    assert state.history[2] == ("user", "nothing new")
    assert state.guardrail_retries == 2 and state.guardrail_flagged == 0


def test_guardrail_rules():
    guard = GuardrailParams(enabled=True, forbidden_first_tokens=["Sure"], min_words=2, max_words=5)
    summary = "The user talks about feeling tired at work every single day."
    assert guardrail_failures("Sure, fine.", [], summary, guard) == ["forbidden_first_token"]
    assert guardrail_failures("one two three four five six", [], summary, guard) == ["too_long"]
    assert guardrail_failures("Tired  AGAIN", ["tired again"], summary, guard) == ["repeats_earlier_turn"]
    copy = GuardrailParams(enabled=True)
    assert guardrail_failures("feeling tired at work every single day", [], summary, copy) == ["copies_summary"]
    assert guardrail_failures("i can't sleep", ["hello"], summary, copy) == []


def test_replay_chatbot_replays_real_assistant_messages_in_order_then_ends():
    bot = ReplayChatbot("replay", {"r0": [["first"], ["second"]]})
    sessions = states(1)
    simulator = ScriptedSimulator(lambda conv: f"user {user_turns(conv)}")
    Simulation(simulator, [ReplayChatbot("bot", {"r0": [["first"], ["second"]]})], SimulateParams(max_turns=5)).run(sessions, progress=False)
    assert [t for r, t in sessions[0].history if r == "assistant"] == ["first", "second"]
    assert sessions[0].stop_reason == "chatbot_ended"
    with pytest.raises(ChatbotError, match="unknown"):
        bot.reply([states(2)[1].chat_request(0)])


def test_messages_cut_by_the_token_budget_are_marked_truncated():
    class CappedSimulator(ScriptedSimulator):
        def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
            # Turn 1 runs into the cap; turn 2 ends on its own; turn 3 says the end marker, then
            # runs into the cap: the words before the marker are whole.
            texts = {0: ("i keep waking up at", True), 1: ("work is fine.", False), 2: (f"ok bye {END} and", True)}
            return [Generated(text=texts[user_turns(c)][0], n_tokens=8, hit_max_tokens=texts[user_turns(c)][1])
                    for c in conversations]

    class CutOnce(Chatbot):
        name = "bot"

        def reply(self, requests):
            turn = sum(m["role"] == "assistant" for m in requests[0].messages)
            return [ChatReply(text=f"reply {turn}", truncated=turn == 0) for _ in requests]

    sessions = states(1)
    Simulation(CappedSimulator(None), [CutOnce()], SimulateParams(max_turns=3)).run(sessions, progress=False)
    _, messages, _ = to_frames(sessions, "sft")
    io.MESSAGES.validate(messages)
    marks = [(role, is_truncated(metadata)) for role, metadata in zip(messages["role"], messages["metadata"])]
    assert marks == [("user", True), ("assistant", True), ("user", False), ("assistant", False), ("user", False)]


def test_a_user_turn_cut_at_the_cap_is_trimmed_to_its_last_sentence_and_counted():
    class CappedSimulator(ScriptedSimulator):
        def generate(self, conversations, decoding, seeds, cache_keys=None, progress=False):
            # Turn 1: a sentence, then cut mid-word; turn 2: a whole message, then a second one cut
            # without a sentence end; turn 3: one cut run-on message (stays cut).
            texts = {0: "i slept badly. then i kept wak", 1: f"fine{SEP}and then i was going to", 2: "so i went to the"}
            return [Generated(text=texts[user_turns(c)], n_tokens=8, hit_max_tokens=True) for c in conversations]

    sessions = states(1)
    Simulation(CappedSimulator(None), [ReplayChatbot("bot", {"r0": [["a"], ["b"], ["c"]]})],
               SimulateParams(max_turns=3)).run(sessions, progress=False)
    _, messages, _ = to_frames(sessions, "sft")
    users = messages[messages["role"] == "user"]
    assert list(users["text"]) == ["i slept badly.", "fine", "so i went to the"]
    assert [is_truncated(m) for m in users["metadata"]] == [False, False, True]
    assert [json.loads(m)["trimmed"] for m in users["metadata"]] == [True, True, False]
    report = truncation_report(messages, pd.DataFrame({"session_id": ["s0"], "chatbot_id": ["bot"]}))
    assert (report["user"]["truncated"], report["user"]["trimmed"], report["user"]["messages"]) == (1, 2, 3)


def test_truncation_report_counts_and_wilson_intervals():
    from scipy.stats import binomtest

    sessions = pd.DataFrame({"session_id": ["s1", "s2", "s3"], "chatbot_id": ["hf", "hf", "replay"]})
    rows = [("s1", "user", True)] * 3 + [("s1", "user", False)] * 2 + [("s1", "assistant", True)] * 4
    rows += [("s2", "user", False)] * 5 + [("s2", "assistant", False)] * 6 + [("s3", "user", True), ("s3", "assistant", False)]
    messages = pd.DataFrame([{"session_id": sid, "role": role, "metadata": json.dumps({"truncated": cut})} for sid, role, cut in rows])
    messages.loc[len(messages)] = {"session_id": "s3", "role": "user", "metadata": "{}"}  # no mark (older file): not cut
    report = truncation_report(messages, sessions)
    expected = {"user": (4, 12), "chatbots": {"hf": (4, 10), "replay": (0, 1)}}
    for block, (k, n) in [(report["user"], expected["user"])] + [(report["chatbots"][c], kn) for c, kn in expected["chatbots"].items()]:
        low, high = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (block["truncated"], block["messages"]) == (k, n)
        assert block["share"] == pytest.approx(k / n, abs=1e-6)
        assert (block["ci_low"], block["ci_high"]) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    assert set(report["chatbots"]) == {"hf", "replay"}


def test_a_chatbot_without_messages_has_no_share():
    sessions = pd.DataFrame({"session_id": ["s1", "s2"], "chatbot_id": ["talks", "silent"]})
    messages = pd.DataFrame([{"session_id": "s1", "role": "assistant", "metadata": '{"truncated": false}'}])
    assert truncation_report(messages, sessions)["chatbots"]["silent"] == {
        "truncated": 0, "messages": 0, "share": None, "ci_low": None, "ci_high": None}


# --- the real stage on a tiny model ---------------------------------------------------------------


def stage(project, tiny_model_dir, chatbots, out="out", **simulate):
    params = SimulateParams(**{"n_contexts": 2, "n_simulations": 2, "max_turns": 3, "precision": "fp32",
                               "decoding": DecodingParams(temperature=1.0, max_new_tokens=8), **simulate})
    return run_simulate("zero-shot", params, chatbots, END, project / "scrubbed", project / "contexts.parquet",
                        project / "splits.parquet", tiny_model_dir, None, project / out, project / f"{out}.json",
                        project / f"{out}.resume.json", progress=False)


HF_BOT = ChatbotParams(name="tiny", backend="hf", system_prompt="Be kind.", decoding=DecodingParams(temperature=0.7, max_new_tokens=6))
REPLAY = ChatbotParams(name="replay", backend="replay")


def test_stage_writes_canonical_sessions_and_is_reproducible(project, tiny_model_dir, caplog):
    with caplog.at_level("INFO", logger="dial.simulation.simulate"):
        first = stage(project, tiny_model_dir, [HF_BOT, REPLAY])
    assert len(first) == 2 * 2 * 2
    out = project / "out"
    sessions = io.SESSIONS.read(paths.sessions_file(out))
    messages = io.MESSAGES.read(paths.messages_file(out))
    assert set(sessions["chatbot_id"]) == {"tiny", "replay"} and sessions["source"].eq("simulated:zero-shot").all()
    meta = json.loads(sessions.iloc[0]["metadata"])
    assert {"simulator_id", "chatbot_id", "seed", "stop_reason", "real_session_id"} <= set(meta)
    counts = messages.groupby("session_id")["role"].value_counts().unstack(fill_value=0)
    merged = first.set_index("session_id").join(counts)
    assert (merged["n_user_messages"] == merged.get("user", 0).fillna(0)).all()
    report = json.loads((project / "out.json").read_text())
    assert report["sessions"] == 8 and set(report["per_chatbot"]) == {"tiny", "replay"}
    # Every simulated message says whether the budget cut it; the report counts them.
    cut = messages["metadata"].map(lambda m: json.loads(m)["truncated"])
    chatbot_of = messages["session_id"].map(sessions.set_index("session_id")["chatbot_id"])
    users, tiny = messages["role"] == "user", (messages["role"] == "assistant") & (chatbot_of == "tiny")
    truncation = report["truncation"]
    assert (truncation["user"]["truncated"], truncation["user"]["messages"]) == (int((cut & users).sum()), int(users.sum()))
    assert (truncation["chatbots"]["tiny"]["truncated"], truncation["chatbots"]["tiny"]["messages"]) == (int((cut & tiny).sum()), int(tiny.sum()))
    assert truncation["chatbots"]["replay"]["truncated"] == 0 and truncation["chatbots"]["replay"]["messages"] > 0
    assert truncation["chatbots"]["tiny"]["truncated"] > 0  # a random model rarely ends within 6 tokens
    logged = next(r.getMessage() for r in caplog.records if "cut by max_new_tokens" in r.getMessage())
    tiny_counts = truncation["chatbots"]["tiny"]
    assert f"tiny {tiny_counts['truncated']}/{tiny_counts['messages']}" in logged and "user (zero-shot)" in logged
    second = stage(project, tiny_model_dir, [HF_BOT, REPLAY], out="again")
    assert (project / "out" / "messages.parquet").read_bytes() == (project / "again" / "messages.parquet").read_bytes()
    assert first.equals(second)


class FailingBot(Chatbot):
    def __init__(self, name, fail_on_turn):
        self.name, self.fail_on_turn = name, fail_on_turn

    def reply(self, requests):
        turn = sum(m["role"] == "assistant" for m in requests[0].messages)
        if turn >= self.fail_on_turn:
            raise ChatbotError(self.name, requests[0].session_id, "HTTP 503 after 3 attempts")
        return [ChatReply(text=None) for _ in requests]  # ends its sessions at once


def test_chatbot_failure_names_it_and_finished_sessions_survive_for_the_next_run(project, tiny_model_dir, monkeypatch):
    import dial.chatbots as chatbots_module

    real_make = chatbots_module.make_chatbots

    def with_failing(params, *args, **kwargs):
        built = real_make([p for p in params if p.name != "flaky"], *args, **kwargs)
        return built + [FailingBot("flaky", fail_on_turn=0)]

    monkeypatch.setattr(chatbots_module, "make_chatbots", with_failing)
    flaky = ChatbotParams(name="flaky", backend="replay")
    with pytest.raises(ChatbotError, match="'flaky'.*sim:zero-shot:flaky"):
        stage(project, tiny_model_dir, [REPLAY, flaky], max_turns=2)
    saved = json.loads((project / "out.resume.json").read_text())["finished"]
    assert saved == []  # round 1 failed before anything finished

    # A chatbot that ends sessions, then fails on a later round: sessions it ended are kept.
    class EndsSome(Chatbot):
        name = "flaky"

        def __init__(self):
            self.round = 0

        def reply(self, requests):
            self.round += 1
            if self.round == 1:
                return [ChatReply(text=None if i % 2 == 0 else "go on") for i, _ in enumerate(requests)]
            raise ChatbotError("flaky", requests[0].session_id, "timeout")

    monkeypatch.setattr(chatbots_module, "make_chatbots", lambda params, *a, **k: real_make([REPLAY], *a, **k) + [EndsSome()])
    with pytest.raises(ChatbotError, match="timeout"):
        stage(project, tiny_model_dir, [REPLAY, flaky], max_turns=2)
    finished = {item["session_id"] for item in json.loads((project / "out.resume.json").read_text())["finished"]}
    assert any(sid.startswith("sim:zero-shot:flaky") for sid in finished)

    # Next run (the chatbot is back): finished sessions are reused, not simulated again.
    monkeypatch.setattr(chatbots_module, "make_chatbots", lambda params, *a, **k: real_make([REPLAY], *a, **k) + [CountingChatbot("flaky")])
    result = stage(project, tiny_model_dir, [REPLAY, flaky], max_turns=2)
    ended_by_flaky = result[result["session_id"].isin(finished) & (result["chatbot_id"] == "flaky")]
    assert (ended_by_flaky["stop_reason"] == "chatbot_ended").all() and len(ended_by_flaky) > 0
    assert not (project / "out.resume.json").exists()


def test_a_turn_is_a_burst_of_user_messages_answered_once_and_max_turns_counts_turns():
    simulator = ScriptedSimulator(lambda conv: f"hey<|msg|>  <|msg|>you there? {user_turns(conv)}")
    bot = CountingChatbot("bot")
    (state,) = states(1)
    Simulation(simulator, [bot], SimulateParams(max_turns=2)).run([state], progress=False)
    # Flipped, each earlier user turn (a burst) is one assistant message of the prompt: 1 after one turn.
    assert state.history == [("user", "hey"), ("user", "you there? 0"), ("assistant", "reply 0"),
                             ("user", "hey"), ("user", "you there? 1"), ("assistant", "reply 1")]
    assert state.stop_reason == "max_turns" and bot.calls == [1, 1]
    assert [m["user_turn"] for m in state.message_metadata if "user_turn" in m] == [0, 0, 1, 1]
