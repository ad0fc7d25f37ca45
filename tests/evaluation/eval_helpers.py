"""Shared test helpers for the evaluation tests."""

import pandas as pd


def messages_frame(rows) -> pd.DataFrame:
    """A canonical messages frame from (session_id, role, text) rows in turn order per session."""
    frame = pd.DataFrame(rows, columns=["session_id", "role", "text"])
    frame["turn_index"] = frame.groupby("session_id").cumcount()
    frame["timestamp"] = None
    frame["metadata"] = "{}"
    return frame
