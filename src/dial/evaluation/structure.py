"""How sessions are shaped, real against each simulator, like for like: the things a discriminator
could win on without reading a word, which the simulator must therefore learn to do (bursts,
message length, ending the session).

Per group, on sessions cut at the same number of user turns (`evaluate.cut_sessions`):

    messages_per_user_turn   user messages / user turns (a turn: a burst of consecutive user messages)
    burst_turn_share         user turns of two or more messages / user turns
    words_per_user_message   words / user messages (whitespace-separated)
    tagged_message_share     user messages holding chat markup ("<|reply|>", "</|msg", "|>"): no
                             user types it, a simulator invents it (after `parse_user_turn` has
                             read the markers), and a discriminator reads it at a glance
    user_turns_per_session   mean user turns of a session
    user_ended_share         sessions the user ended within the compared turns: a real session
                             with no more user turns than that (its user left there), a simulated
                             one stopped by the end marker (`stop_reason` user_ended)

Ratios carry a 95 % percentile bootstrap interval over sessions (clustered: a resample draws
whole sessions, `dial.evaluation.stats.resample_weights`); the ended share a Wilson interval.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from dial.evaluation import stats

COLUMNS = ["session_id", "user_turns", "burst_turns", "user_messages", "user_words", "tagged_messages", "ended"]
CHAT_MARKUP = re.compile(r"</?\||\|>")  # what opens or closes a chat-template tag or a marker
RATIOS = {  # metric: (numerator column, denominator column)
    "messages_per_user_turn": ("user_messages", "user_turns"),
    "burst_turn_share": ("burst_turns", "user_turns"),
    "words_per_user_message": ("user_words", "user_messages"),
    "tagged_message_share": ("tagged_messages", "user_messages"),
}


def per_session(messages: pd.DataFrame, ended: Mapping[str, bool], session_ids: Iterable[str] = ()) -> pd.DataFrame:
    """One row per session (COLUMNS) of `messages` and of `session_ids`; `ended`: session → the
    user ended it. A session without a message (a simulated user who ended it at once) is a row
    of zeros: leaving it out would hide the earliest endings."""
    rows = []
    ordered = messages.sort_values(["session_id", "turn_index"], kind="stable")
    ordered = ordered.assign(session_id=ordered["session_id"].astype(str))
    silent = sorted(set(map(str, session_ids)) - set(ordered["session_id"]))
    for session_id in silent:
        rows.append({"session_id": session_id, "user_turns": 0, "burst_turns": 0, "user_messages": 0, "user_words": 0,
                     "tagged_messages": 0, "ended": bool(ended.get(session_id, False))})
    for session_id, group in ordered.groupby("session_id", sort=True):
        turns, burst_turns, run = 0, 0, 0
        for role in [*group["role"], None]:
            if role == "user":
                run += 1
                continue
            if run:
                turns += 1
                burst_turns += run > 1
            run = 0
        users = group.loc[group["role"] == "user", "text"]
        rows.append(
            {
                "session_id": str(session_id),
                "user_turns": turns,
                "burst_turns": burst_turns,
                "user_messages": len(users),
                "user_words": int(sum(len(str(text).split()) for text in users)),
                "tagged_messages": int(sum(bool(CHAT_MARKUP.search(str(text))) for text in users)),
                "ended": bool(ended.get(str(session_id), False)),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("session_id", kind="stable").reset_index(drop=True)


def summarise(frame: pd.DataFrame, n_resamples: int, seed: int, label: str) -> dict:
    """The group's structure metrics (module docstring) with their intervals and n."""
    n = len(frame)
    summary: dict = {"n_sessions": n, "n_user_turns": int(frame["user_turns"].sum())}
    weights = stats.resample_weights(n, n_resamples, stats.stable_rng(seed, "structure", label))
    for name, (top, bottom) in RATIOS.items():
        total = float(frame[bottom].sum())
        summary[name] = float(frame[top].sum()) / total if total else None
        interval = stats.percentile_interval(stats.ratio_replicates(weights, frame[top].to_numpy(), frame[bottom].to_numpy()))
        summary[f"{name}_ci_low"], summary[f"{name}_ci_high"] = interval if interval and total else (None, None)
    turns = frame["user_turns"].to_numpy(dtype=np.float64)
    summary["user_turns_per_session"] = float(turns.mean()) if n else None
    interval = stats.percentile_interval(stats.ratio_replicates(weights, turns, np.ones(n))) if n else None
    summary["user_turns_per_session_ci_low"], summary["user_turns_per_session_ci_high"] = interval or (None, None)
    k = int(frame["ended"].sum())
    summary["user_ended"] = k
    summary["user_ended_share"] = k / n if n else None
    wilson = stats.wilson_interval(k, n)
    summary["user_ended_share_ci_low"], summary["user_ended_share_ci_high"] = wilson or (None, None)
    return summary


def real_ended(whole_messages: pd.DataFrame, user_turns: int) -> dict[str, bool]:
    """Real sessions whose user left within `user_turns` turns: the whole session has no more."""
    ended = {}
    for session_id, group in whole_messages.sort_values(["session_id", "turn_index"], kind="stable").groupby("session_id"):
        roles = list(group["role"])
        n_turns = sum(1 for i, role in enumerate(roles) if role == "user" and (i == 0 or roles[i - 1] != "user"))
        ended[str(session_id)] = n_turns <= user_turns
    return ended


def simulated_ended(simulations: pd.DataFrame) -> dict[str, bool]:
    return dict(zip(simulations["session_id"].astype(str), simulations["stop_reason"] == "user_ended"))
