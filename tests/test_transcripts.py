"""`dial show`: any session, real or simulated, as a transcript."""

import json

import pandas as pd
import pytest

from dial import io, paths
from dial.errors import InputError
from dial.transcripts import find_session, render


def write_sessions(directory, session_id, source):
    directory.mkdir(parents=True)
    io.SESSIONS.write(pd.DataFrame([{"session_id": session_id, "user_id": "u", "source": source, "session_index": 0,
                                     "started_at": None, "chatbot_id": "bot", "topic": "sleep", "metadata": "{}"}]),
                      paths.sessions_file(directory))
    io.MESSAGES.write(pd.DataFrame([
        {"session_id": session_id, "turn_index": 0, "role": "user", "text": "i can't sleep", "timestamp": None,
         "metadata": json.dumps({"flagged": ["too_short"]})},
        {"session_id": session_id, "turn_index": 1, "role": "assistant", "text": "I'm sorry to hear that.", "timestamp": None, "metadata": "{}"},
    ]), paths.messages_file(directory))


def test_real_and_simulated_sessions_are_found_and_rendered(tmp_path):
    write_sessions(tmp_path / paths.SCRUBBED_DIR, "real-1", "esconv")
    simulated = tmp_path / paths.SIMULATED_DIR / "sft"
    write_sessions(simulated, "sim:sft:bot:real-1:0", "simulated:sft")
    io.SIMULATIONS.write(pd.DataFrame([{
        "session_id": "sim:sft:bot:real-1:0", "simulator_id": "sft", "chatbot_id": "bot", "real_session_id": "real-1",
        "real_user_id": "u", "simulation_index": 0, "seed": 7, "stop_reason": "user_ended", "n_user_messages": 1,
        "n_assistant_messages": 1, "user_tokens_generated": 5, "guardrail_retries": 1, "guardrail_flagged": 1}]),
        simulated / "simulations.parquet")
    real = render(find_session("real-1", tmp_path))
    assert "USER    i can't sleep" in real and "CHATBOT I'm sorry" in real and "source esconv" in real
    sim = render(find_session("sim:sft:bot:real-1:0", tmp_path))
    assert "simulator sft" in sim and "stop user_ended" in sim and "[guardrail: too_short]" in sim
    with pytest.raises(InputError, match="'nope' not found"):
        find_session("nope", tmp_path)
