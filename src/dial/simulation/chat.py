"""`dial chat`: watch a simulator talk, live, to a chatbot backend or to a person.

The person (or chatbot) plays the chatbot; the simulator plays the user, grounded on a held-out
real context. Useful to eyeball a simulator before trusting its metrics.
"""

from __future__ import annotations

from typing import Callable

from dial.chatbots import Chatbot, ChatRequest
from dial.simulation.generation import ChatGenerator
from dial.params import DecodingParams
from dial.prompting import DEFAULT_END_MARKER, DEFAULT_MESSAGE_SEPARATOR, parse_user_turn, simulator_messages, trim_cut_turn
from dial.simulation.simulate import stable_seed

QUIT_COMMANDS = {"/quit", "/exit", "/end"}


def chat_loop(
    simulator: ChatGenerator,
    context_text: str,
    decoding: DecodingParams,
    chatbot: Chatbot | None,
    ask: Callable[[str], str],
    say: Callable[[str], None],
    max_turns: int = 20,
    seed: int = 0,
    end_marker: str = DEFAULT_END_MARKER,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
    real_session_id: str = "chat",
) -> str:
    """Alternate simulator (user) and chatbot (backend, or a person through `ask`) turns; a user
    turn may be several messages (`parse_user_turn`). Returns the stop reason."""
    history: list[tuple[str, str]] = []
    for turn in range(max_turns):
        (generated,) = simulator.generate(
            [simulator_messages(context_text, history, message_separator)], decoding, [stable_seed(seed, "user", turn)], cache_keys=["chat"]
        )
        user_turn = parse_user_turn(generated.text, end_marker, message_separator)
        if generated.hit_max_tokens:
            user_turn = trim_cut_turn(user_turn) or user_turn  # as the simulation keeps it
        for text in user_turn.messages:
            history.append(("user", text))
            say(f"USER    {text}")
        if user_turn.ends:
            say("--- the simulated user ended the conversation")
            return "user_ended"
        if not user_turn.messages:
            say("--- the simulator produced an empty message")
            return "empty_message"
        if chatbot is None:
            reply = ask("CHATBOT > ").strip()
            if reply in QUIT_COMMANDS or not reply:
                return "chatbot_ended"
            replies = [reply]
        else:
            # real_session_id: the session whose context grounds the chat (replay answers with its turns).
            (answer,) = chatbot.reply(
                [ChatRequest("chat", real_session_id, stable_seed(seed, "chatbot", turn), [{"role": r, "content": t} for r, t in history])]
            )
            if answer.text is None:
                say("--- the chatbot ended the conversation")
                return "chatbot_ended"
            replies = answer.messages  # a replayed burst: several messages, one turn
            for reply in replies:
                say(f"CHATBOT {reply}")
        history.extend(("assistant", reply) for reply in replies)
    say(f"--- {max_turns} turns reached")
    return "max_turns"
