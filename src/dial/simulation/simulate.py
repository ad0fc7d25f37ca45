"""Simulation engine (METHOD.md §5.1): a user simulator converses with chatbots.

Protocol: N held-out real contexts (test-split users) × M simulations × every configured chatbot.
A session stops when the simulator emits the end-of-conversation marker, when the chatbot ends
it, or after `max_turns` user turns; the stop reason is recorded. A user turn is one generation,
split on the message separator into one or more consecutive user messages (a burst, as real
users send); the chatbot answers once after the whole turn (`dial.prompting.parse_user_turn`).

Rollouts run in lockstep: every round, all active sessions generate their next user message in
one batched call, then each chatbot answers all of its active sessions in one batched call;
finished sessions leave the batch. Every session has its own seed (derived from the params, the
real session, the chatbot and the simulation index, not from the simulator), so the same params
give the same sessions, and different simulators face paired conditions.

Finished sessions are saved to a resume file after every round: when a chatbot fails mid-run
(after its retries), the error names the chatbot and session, and the next run with the same
params and models only simulates the sessions that had not finished.

Every simulated message records in its metadata whether the token budget cut it (`truncated`: the
simulator or an hf chatbot reached max_new_tokens without its end-of-turn token, an openai chatbot
answered with finish_reason "length"). A user turn that reached the cap is first trimmed to its
last complete sentence (`prompting.trim_cut_turn`; `trimmed` in its last message's metadata, counted
in the report); only a turn with no sentence end to stop at stays cut. A cut message ends mid-sentence because of our budget, not
because of the user or the chatbot: judges leave it out of "Incomplete message", and the report
gives the share of cut messages (user side and per chatbot) with a Wilson interval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm

from dial.chatbots import Chatbot, ChatbotError, ChatRequest, reply_all
from dial.errors import DialError
from dial.evaluation.stats import wilson_interval
from dial.params import GuardrailParams, SimulateParams, SimulatorParams
from dial.simulation.backends import SimulatorServerError, load_simulator
from dial.simulation.generation import ChatGenerator
from dial.prompting import DEFAULT_END_MARKER, DEFAULT_MESSAGE_SEPARATOR, parse_user_turn, simulator_messages, trim_cut_turn
from dial.schemas import is_truncated
from dial.summarise import verbatim_leak

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"


@dataclass
class SessionState:
    """One simulated session while it is being generated."""

    session_id: str
    real_session_id: str
    real_user_id: str
    chatbot_id: str
    simulation_index: int
    seed: int
    context_text: str
    current_summary: str
    topic: str | None
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, text): user = simulated
    message_metadata: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    user_tokens_generated: int = 0
    guardrail_retries: int = 0
    guardrail_flagged: int = 0

    @property
    def n_user_messages(self) -> int:
        return sum(1 for role, _ in self.history if role == "user")

    def chat_request(self, turn: int) -> ChatRequest:
        return ChatRequest(
            session_id=self.session_id,
            real_session_id=self.real_session_id,
            seed=stable_seed(self.seed, "chatbot", turn),
            messages=[{"role": role, "content": text} for role, text in self.history],
        )


def stable_seed(*parts) -> int:
    """A 63-bit seed from any values, stable across runs and machines (unlike hash())."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# --- which sessions to simulate ------------------------------------------------------------------


def select_contexts(
    contexts: pd.DataFrame, sessions: pd.DataFrame, messages: pd.DataFrame, splits: pd.DataFrame, params: SimulateParams
) -> pd.DataFrame:
    """A seeded sample of held-out real sessions (test-split users) to ground simulations.

    Only sessions with at least one user and one assistant message qualify: an unanswered real
    session gives the replay chatbot nothing to say and the discriminator nothing to compare."""
    test_users = set(splits.loc[splits["split"] == "test", "user_id"])
    roles = messages.groupby(["session_id", "role"]).size().unstack(fill_value=0)
    answered = set(roles.index[(roles.get("user", 0) > 0) & (roles.get("assistant", 0) > 0)])
    candidates = sessions[sessions["user_id"].isin(test_users) & sessions["session_id"].isin(answered)]
    candidates = candidates.merge(contexts[["session_id", "context_text", "current_summary"]], on="session_id")
    if candidates.empty:
        raise DialError(
            "simulate: no held-out session to ground simulations (test-split users with at least one "
            "user and one assistant message); raise split.test_fraction or data.max_sessions"
        )
    candidates = candidates.sort_values("session_id").reset_index(drop=True)
    if len(candidates) < params.n_contexts:
        log.warning("simulate: only %d held-out contexts qualify (simulate.n_contexts=%d)", len(candidates), params.n_contexts)
        return candidates
    return candidates.sample(n=params.n_contexts, random_state=params.seed).sort_values("session_id").reset_index(drop=True)


def plan_sessions(selected: pd.DataFrame, chatbot_ids: Sequence[str], simulator_id: str, params: SimulateParams) -> list[SessionState]:
    states = []
    for row in selected.itertuples(index=False):
        for chatbot_id in chatbot_ids:
            for m in range(params.n_simulations):
                states.append(
                    SessionState(
                        session_id=f"sim:{simulator_id}:{chatbot_id}:{row.session_id}:{m}",
                        real_session_id=row.session_id,
                        real_user_id=row.user_id,
                        chatbot_id=chatbot_id,
                        simulation_index=m,
                        seed=stable_seed(params.seed, row.session_id, chatbot_id, m),
                        context_text=row.context_text,
                        current_summary=row.current_summary,
                        topic=row.topic if isinstance(row.topic, str) else None,
                    )
                )
    return states


# --- guardrails (UserLM) ------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text.strip().lower())


def guardrail_failures(text: str, earlier_user_texts: Sequence[str], summary: str, params: GuardrailParams) -> list[str]:
    """Names of the guardrails a generated user message breaks (empty when it passes)."""
    failures = []
    words = text.split()
    if params.forbidden_first_tokens and words:
        first = words[0].strip(".,!?;:'\"").lower()
        if first in {token.lower() for token in params.forbidden_first_tokens}:
            failures.append("forbidden_first_token")
    if params.min_words and len(words) < params.min_words:
        failures.append("too_short")
    if params.max_words and len(words) > params.max_words:
        failures.append("too_long")
    if params.no_repeat_user_turns and _normalise(text) in {_normalise(earlier) for earlier in earlier_user_texts}:
        failures.append("repeats_earlier_turn")
    if params.no_repeat_summary and summary and verbatim_leak(text, [summary]):
        failures.append("copies_summary")
    return failures


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class SimulationStats:
    rounds: int = 0
    user_tokens: int = 0
    chatbot_calls: int = 0
    seconds: float = 0.0


class Simulation:
    """Lockstep batched rollouts of `states` between one simulator and the chatbots."""

    def __init__(
        self,
        simulator: ChatGenerator,
        chatbots: Sequence[Chatbot],
        params: SimulateParams,
        end_marker: str = DEFAULT_END_MARKER,
        on_round_end=None,
        message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
    ) -> None:
        self.simulator = simulator
        self.chatbots = {chatbot.name: chatbot for chatbot in chatbots}
        self.params = params
        self.end_marker = end_marker
        self.message_separator = message_separator
        self.on_round_end = on_round_end  # called with the states after every round (resume file)
        self.stats = SimulationStats()

    def run(self, states: list[SessionState], progress: bool = True) -> list[SessionState]:
        """Simulate every unfinished session, `batch_size` sessions at a time (a wave): all rounds
        of a wave run in lockstep; cached prompt prefixes are dropped when the wave ends, which
        bounds memory."""
        started = time.perf_counter()
        unknown = sorted({state.chatbot_id for state in states} - set(self.chatbots))
        if unknown:
            raise DialError(f"simulate: sessions refer to unconfigured chatbot(s) {unknown}")
        todo = [state for state in states if state.stop_reason is None]
        bar = tqdm(total=len(todo), desc="simulate", unit="session", disable=not progress)
        try:
            for start in range(0, len(todo), self.params.batch_size):
                wave = todo[start : start + self.params.batch_size]
                try:
                    for turn in range(self.params.max_turns):
                        active = [state for state in wave if state.stop_reason is None]
                        if not active:
                            break
                        self._user_turn(active, turn)
                        self._chatbot_turn([state for state in active if state.stop_reason is None], turn)
                        if turn == self.params.max_turns - 1:
                            for state in active:
                                if state.stop_reason is None:
                                    state.stop_reason = "max_turns"
                        self.stats.rounds += 1
                        finished_now = sum(state.stop_reason is not None for state in active)
                        bar.update(finished_now)
                        bar.set_postfix(
                            round=turn + 1,
                            user_tok_s=f"{self.stats.user_tokens / max(time.perf_counter() - started, 1e-9):.1f}",
                        )
                        if self.on_round_end is not None:
                            self.on_round_end(states)
                finally:
                    self._forget(wave)
        finally:
            bar.close()
            self.stats.seconds += time.perf_counter() - started
        return states

    def _forget(self, wave: list[SessionState]) -> None:
        self.simulator.forget([self._cache_key(state) for state in wave])
        session_ids = [state.session_id for state in wave]
        for chatbot in self.chatbots.values():
            chatbot.forget(session_ids)

    @staticmethod
    def _cache_key(state: SessionState) -> str:
        return f"user:{state.session_id}"

    def _user_turn(self, active: list[SessionState], turn: int) -> None:
        guardrails = self.params.guardrails
        max_retries = guardrails.max_retries if guardrails.enabled else 2  # empty messages: always retried
        pending = list(range(len(active)))
        # index -> text, tokens (all attempts), attempt, failures, hit max_new_tokens
        results: dict[int, tuple[str, int, int, list[str], bool]] = {}
        for attempt in range(max_retries + 1):
            conversations = [simulator_messages(active[i].context_text, active[i].history, self.message_separator) for i in pending]
            seeds = [stable_seed(active[i].seed, "user", turn, attempt) for i in pending]
            generated = self.simulator.generate(
                conversations, self.params.decoding, seeds, cache_keys=[self._cache_key(active[i]) for i in pending]
            )
            retry = []
            for i, g in zip(pending, generated):
                state = active[i]
                tokens = results.get(i, ("", 0, 0, []))[1] + g.n_tokens
                failures = self._failures(g.text, state)
                results[i] = (g.text, tokens, attempt, failures, g.hit_max_tokens)
                if failures:
                    retry.append(i)
            pending = retry
            if not pending or attempt == max_retries:
                break
            for i in pending:
                active[i].guardrail_retries += 1
        for i, (text, tokens, attempt, failures, hit_max_tokens) in results.items():
            state = active[i]
            state.user_tokens_generated += tokens
            self.stats.user_tokens += tokens
            # One turn: its messages become consecutive user rows (the chatbot answers once, after
            # all of them); `n_tokens` is the whole turn's, on each of its messages.
            user_turn = parse_user_turn(text, self.end_marker, self.message_separator)
            trimmed = False
            if hit_max_tokens and not user_turn.ends:
                whole = trim_cut_turn(user_turn)
                if whole is not None:
                    user_turn, hit_max_tokens, trimmed = whole, False, True
            if not user_turn.messages and not user_turn.ends:
                state.stop_reason = "empty_message"
                continue
            if failures:
                state.guardrail_flagged += 1
            for k, message in enumerate(user_turn.messages):
                state.history.append(("user", message))
                # Only a turn's last message can be cut (or trimmed); an ending turn is whole even
                # if tokens after the marker ran into the budget.
                last = k == len(user_turn.messages) - 1
                state.message_metadata.append(
                    {"n_tokens": tokens, "attempts": attempt + 1, "flagged": failures, "truncated": hit_max_tokens and not user_turn.ends and last,
                     "trimmed": trimmed and last, "user_turn": turn}
                )
            if user_turn.ends:
                state.stop_reason = "user_ended"

    def _failures(self, text: str, state: SessionState) -> list[str]:
        user_turn = parse_user_turn(text, self.end_marker, self.message_separator)
        if user_turn.ends:
            # Ending is always allowed, except before saying anything: no real session is one
            # where the user opens the chat and leaves it silently (then retried like an empty message).
            said_something = user_turn.messages or any(role == "user" for role, _ in state.history)
            return [] if said_something else ["ended_before_speaking"]
        if not user_turn.messages:
            return ["empty"]
        if not self.params.guardrails.enabled:
            return []
        # Each message of the turn is checked, against the earlier ones of the turn too.
        earlier = [message for role, message in state.history if role == "user"]
        failures: list[str] = []
        for message in user_turn.messages:
            for failure in guardrail_failures(message, earlier, state.current_summary, self.params.guardrails):
                if failure not in failures:
                    failures.append(failure)
            earlier.append(message)
        return failures

    def _chatbot_turn(self, active: list[SessionState], turn: int) -> None:
        groups = {chatbot_id: [state for state in active if state.chatbot_id == chatbot_id] for chatbot_id in self.chatbots}
        groups = {chatbot_id: group for chatbot_id, group in groups.items() if group}
        answers = reply_all([(self.chatbots[chatbot_id], [state.chat_request(turn) for state in group]) for chatbot_id, group in groups.items()])
        self.stats.chatbot_calls += len(groups)
        for (chatbot_id, group), replies in zip(groups.items(), answers):
            if len(replies) != len(group):
                raise ChatbotError(chatbot_id, group[0].session_id, f"{len(replies)} replies for {len(group)} requests")
            for state, reply in zip(group, replies):
                if reply.text is None or not reply.text.strip():
                    state.stop_reason = "chatbot_ended"
                else:
                    messages = reply.messages
                    for k, message in enumerate(messages):
                        state.history.append(("assistant", message))
                        # Only a turn's last message can be cut by a token budget.
                        state.message_metadata.append({**reply.metadata, "truncated": reply.truncated and k == len(messages) - 1})


# --- artifacts ----------------------------------------------------------------------------------


def to_frames(states: Sequence[SessionState], simulator_id: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Canonical sessions + messages (like real ones) and the per-session generation metadata."""
    session_rows, message_rows, simulation_rows = [], [], []
    index_of_user: dict[str, int] = {}
    for state in sorted(states, key=lambda s: s.session_id):
        if state.stop_reason is None:
            raise DialError(f"simulate: session {state.session_id} has not finished")
        user_id = f"sim:{simulator_id}:{state.real_user_id}"
        session_index = index_of_user.get(user_id, 0)
        index_of_user[user_id] = session_index + 1
        generation = {
            "simulator_id": simulator_id,
            "chatbot_id": state.chatbot_id,
            "real_session_id": state.real_session_id,
            "seed": state.seed,
            "stop_reason": state.stop_reason,
        }
        session_rows.append(
            {
                "session_id": state.session_id,
                "user_id": user_id,
                "source": f"simulated:{simulator_id}",
                "session_index": session_index,
                "started_at": None,
                "chatbot_id": state.chatbot_id,
                "topic": state.topic,
                "metadata": json.dumps(generation, sort_keys=True),
            }
        )
        for turn, ((role, text), metadata) in enumerate(zip(state.history, state.message_metadata)):
            message_rows.append(
                {
                    "session_id": state.session_id,
                    "turn_index": turn,
                    "role": role,
                    "text": text,
                    "timestamp": None,
                    "metadata": json.dumps(metadata, sort_keys=True),
                }
            )
        simulation_rows.append(
            {
                "session_id": state.session_id,
                "simulator_id": simulator_id,
                "chatbot_id": state.chatbot_id,
                "real_session_id": state.real_session_id,
                "real_user_id": state.real_user_id,
                "simulation_index": state.simulation_index,
                "seed": state.seed,
                "stop_reason": state.stop_reason,
                "n_user_messages": state.n_user_messages,
                "n_assistant_messages": len(state.history) - state.n_user_messages,
                "user_tokens_generated": state.user_tokens_generated,
                "guardrail_retries": state.guardrail_retries,
                "guardrail_flagged": state.guardrail_flagged,
            }
        )
    return pd.DataFrame(session_rows), pd.DataFrame(message_rows), pd.DataFrame(simulation_rows)


def truncation_share(truncated: int, messages: int) -> dict:
    """k cut of n messages, the share and its 95% Wilson interval (None for all three when n = 0)."""
    interval = wilson_interval(truncated, messages)
    return {
        "truncated": int(truncated),
        "messages": int(messages),
        "share": round(truncated / messages, 6) if messages else None,
        "ci_low": round(interval[0], 6) if interval else None,
        "ci_high": round(interval[1], 6) if interval else None,
    }


def truncation_report(messages: pd.DataFrame, sessions: pd.DataFrame) -> dict:
    """Messages cut by the token budget: simulated user messages, and each chatbot's messages,
    as counts, share and 95% Wilson interval. Every chatbot of `sessions` is listed, also with
    no message (replay is never cut)."""
    cut = messages["metadata"].map(is_truncated).astype(bool)
    trimmed = messages["metadata"].map(lambda metadata: json.loads(metadata).get("trimmed", False) is True).astype(bool)
    users = messages["role"] == "user"
    chatbot_of = messages["session_id"].map(sessions.set_index("session_id")["chatbot_id"])
    chatbots = {}
    for chatbot in sorted(sessions["chatbot_id"].unique()):
        theirs = (messages["role"] == "assistant") & (chatbot_of == chatbot)
        chatbots[chatbot] = truncation_share(int((cut & theirs).sum()), int(theirs.sum()))
    # User turns that reached the cap and were trimmed to their last complete sentence (not cut).
    user = {**truncation_share(int((cut & users).sum()), int(users.sum())), "trimmed": int((trimmed & users).sum())}
    return {"user": user, "chatbots": chatbots}


def report(simulations: pd.DataFrame, simulator_id: str, truncation: dict | None = None) -> dict:
    """Counts only (no timings): tracked metrics must be identical across identical runs.
    `truncation`: from `truncation_report`."""
    def summary(frame: pd.DataFrame) -> dict:
        return {
            "sessions": int(len(frame)),
            "stop_reasons": {reason: int(n) for reason, n in sorted(frame["stop_reason"].value_counts().items())},
            "user_messages_mean": round(float(frame["n_user_messages"].mean()), 3) if len(frame) else 0.0,
            "assistant_messages_mean": round(float(frame["n_assistant_messages"].mean()), 3) if len(frame) else 0.0,
            "guardrail_retries": int(frame["guardrail_retries"].sum()),
            "guardrail_flagged": int(frame["guardrail_flagged"].sum()),
        }

    result = {"simulator": simulator_id, **summary(simulations)}
    result["per_chatbot"] = {chatbot: summary(group) for chatbot, group in sorted(simulations.groupby("chatbot_id"))}
    if truncation is not None:
        result["truncation"] = truncation
    return result


def log_truncation(simulator_id: str, truncation: dict) -> None:
    def line(who: str, counts: dict) -> str:
        if not counts["messages"]:
            return f"{who} no message"
        return (f"{who} {counts['truncated']}/{counts['messages']} ({100 * counts['share']:.1f}%, "
                f"95% CI {100 * counts['ci_low']:.1f}-{100 * counts['ci_high']:.1f}%)")

    parts = [line(f"user ({simulator_id})", truncation["user"]) + f", {truncation['user'].get('trimmed', 0)} more trimmed to a sentence end"]
    parts += [line(chatbot, counts) for chatbot, counts in truncation["chatbots"].items()]
    log.info("simulate %s: messages cut by max_new_tokens: %s", simulator_id, "; ".join(parts))


# --- resume file --------------------------------------------------------------------------------


class ResumeFile:
    """Finished sessions of an interrupted run, valid only for the same fingerprint."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> dict[str, SessionState]:
        if not self.path.exists():
            return {}
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError:
            return {}
        if payload.get("fingerprint") != self.fingerprint:
            return {}
        finished = {}
        for item in payload["finished"]:
            item["history"] = [tuple(message) for message in item["history"]]
            finished[item["session_id"]] = SessionState(**item)
        return finished

    def save(self, states: Sequence[SessionState]) -> None:
        from dial.io import write_text_atomic

        finished = [asdict(state) for state in states if state.stop_reason is not None]
        # A temporary file of its own: two processes saving at once never rename each other's half-written file.
        write_text_atomic(self.path, json.dumps({"fingerprint": self.fingerprint, "finished": finished}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _model_stamp(directory: Path | None) -> list:
    """Cheap identity of a model directory's weights (size and mtime of each file)."""
    if directory is None:
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(directory).glob("*.safetensors"))


# --- the stage ----------------------------------------------------------------------------------


def run_simulate(
    simulator_id: str,
    params: SimulateParams,
    chatbot_params: Sequence,
    end_marker: str,
    scrubbed_dir: Path,
    contexts_path: Path,
    splits_path: Path,
    base_model_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    report_path: Path,
    resume_path: Path,
    progress: bool = True,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
    simulator_settings: SimulatorParams | None = None,
) -> pd.DataFrame:
    """Stage: simulate held-out contexts × simulations × chatbots with one simulator.

    `adapter_dir` is the simulator's LoRA adapter (None for the zero-shot base model);
    `simulator_settings` where its messages are generated (`simulator:` params; default local)."""
    simulator_settings = simulator_settings or SimulatorParams()
    from dial import io, paths
    from dial.chatbots import make_chatbots
    from dial.chatbots.replay import partner_turns
    from dial.checks import assert_checks

    sessions = io.SESSIONS.read(paths.sessions_file(scrubbed_dir))
    messages = io.MESSAGES.read(paths.messages_file(scrubbed_dir))
    contexts = io.CONTEXTS.read(contexts_path)
    splits = io.SPLITS.read(splits_path)
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").exists():
        raise DialError(f"{adapter_dir}: no LoRA adapter (adapter_config.json) for simulator {simulator_id!r}")

    selected = select_contexts(contexts, sessions, messages, splits, params)
    chatbot_ids = [chatbot.name for chatbot in chatbot_params]
    states = plan_sessions(selected, chatbot_ids, simulator_id, params)
    resume = ResumeFile(
        resume_path,
        fingerprint(
            simulator_id, params.model_dump(), [c.model_dump() for c in chatbot_params], end_marker, message_separator,
            list(selected["session_id"]), _model_stamp(base_model_dir), _model_stamp(adapter_dir),
            simulator_settings.model_dump(),
        ),
    )
    finished = resume.load()
    if finished:
        log.info("simulate %s: resuming, %d of %d sessions already finished", simulator_id, len(finished), len(states))
    states = [finished.get(state.session_id, state) for state in states]
    todo = [state for state in states if state.stop_reason is None]

    log.info(
        "simulate %s: %d contexts x %d simulations x %d chatbots = %d sessions (%d to generate)",
        simulator_id, len(selected), params.n_simulations, len(chatbot_ids), len(states), len(todo),
    )
    if todo:
        simulator = load_simulator(simulator_id, simulator_settings, base_model_dir, adapter_dir, params.precision, params.batch_size)
        chatbots = make_chatbots(chatbot_params, base_model_dir, partner_turns(messages), params.precision, params.batch_size)
        simulation = Simulation(
            simulator, chatbots, params, end_marker, on_round_end=lambda _: resume.save(states),
            message_separator=message_separator,
        )
        try:
            simulation.run(states, progress=progress)
        except (ChatbotError, SimulatorServerError):
            resume.save(states)  # finished sessions survive for the next run
            raise
        finally:
            for chatbot in chatbots:
                chatbot.close()
            if hasattr(simulator, "close"):
                simulator.close()
        stats = simulation.stats
        log.info(
            "simulate %s: %d rounds, %d user tokens in %.1f s (%.1f user tokens/s incl. chatbots)",
            simulator_id, stats.rounds, stats.user_tokens, stats.seconds, stats.user_tokens / max(stats.seconds, 1e-9),
        )

    sim_sessions, sim_messages, simulations = to_frames(states, simulator_id)
    assert_checks({"sessions": sim_sessions, "messages": sim_messages}, ["turns_contiguous"], where=str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    io.SESSIONS.write(sim_sessions, paths.sessions_file(out_dir))
    io.MESSAGES.write(sim_messages, paths.messages_file(out_dir))
    io.SIMULATIONS.write(simulations, out_dir / "simulations.parquet")
    truncation = truncation_report(sim_messages, sim_sessions)
    log_truncation(simulator_id, truncation)
    from dial.simulation.generation import default_device
    from dial.training.common import resolve_precision

    summary = report(simulations, simulator_id, truncation)
    # What `auto` resolved to (the simulator's and hf chatbots' dtype): bf16 and fp32 machines
    # sample different sessions from the same seeds.
    summary["precision"] = resolve_precision(params.precision, default_device())
    summary["simulator_backend"] = simulator_settings.backend
    if simulator_settings.backend == "openai":
        summary["served_model"] = simulator_settings.server.served_model(simulator_id)
    io.write_json_atomic(report_path, summary)
    resume.clear()
    return simulations
