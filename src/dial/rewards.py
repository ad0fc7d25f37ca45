"""Per-message rewards from discriminator scores, and the critical points of each session
(METHOD.md §5 steps 3–4; DIAL paper §3.5).

The reward of user message t of a simulated session is how much it moved the discriminator's
log-odds that the session is real:

    r_t = logit(p_t) − logit(p_{t−1}),   t = 1..n

where p_t is the discriminator's output at the last token of user message t and p_0 its output at
the end of the user context, before any user message (`logit_0` in the scores; see
`dial.discriminator`). Everything is computed on the logits the discriminator returns, never by
going through probabilities (logit(sigmoid(x)) saturates at |x| ≳ 17 in float32/float64).

Messages the discriminator could not score (over its token budget, see the `status` column of the
scores) get no reward (NaN) and are never critical points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dial.errors import DialError

REWARD_COLUMNS = ["session_id", "turn_index", "user_turn_number", "logit", "logit_prev", "reward"]
CRITICAL_COLUMNS = ["session_id", "turn_index", "user_turn_number", "reward", "kind", "rank"]


def message_rewards(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per user message of `scores` (pass the simulated sessions' scores): its logit, the
    logit before it (`logit_0` for the first user message) and the reward = the difference.

    `scores` needs session_id, turn_index, user_turn_number (1..n, contiguous per session), logit
    and logit_0 (per session, repeated on its rows), as `dial.discriminator.score_sessions` returns.
    """
    missing = [c for c in ("session_id", "turn_index", "user_turn_number", "logit", "logit_0") if c not in scores.columns]
    if missing:
        raise DialError(f"message_rewards: scores lack column(s) {missing}")
    if scores.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(REWARD_COLUMNS, [str, int, int, float, float, float])})
    frame = scores.sort_values(["session_id", "user_turn_number"], kind="stable").reset_index(drop=True)
    numbers = frame.groupby("session_id", sort=False)["user_turn_number"]
    contiguous = (numbers.transform("min") == 1) & (numbers.transform("max") == numbers.transform("count"))
    contiguous &= ~frame.duplicated(["session_id", "user_turn_number"], keep=False)
    if not contiguous.all():
        bad = sorted(frame.loc[~contiguous, "session_id"].unique())[:5]
        raise DialError(
            f"message_rewards: user_turn_number must run 1..n within each session (every user message of the "
            f"session, scored or not); not the case for {bad}"
        )
    logit = frame["logit"].astype("float64")
    previous = logit.groupby(frame["session_id"], sort=False).shift(1)
    first = frame["user_turn_number"] == 1
    previous = previous.where(~first, frame["logit_0"].astype("float64"))
    return pd.DataFrame(
        {
            "session_id": frame["session_id"].astype(str),
            "turn_index": frame["turn_index"].astype("int64"),
            "user_turn_number": frame["user_turn_number"].astype("int64"),
            "logit": logit,
            "logit_prev": previous,
            "reward": logit - previous,  # NaN when either side was not scored
        }
    )


def critical_points(rewards: pd.DataFrame, n_per_session: int = 1) -> pd.DataFrame:
    """Per session, the `n_per_session` user messages with the highest reward (kind "highest") and
    the `n_per_session` with the lowest (kind "lowest"), all distinct messages.

    Highest are picked first; the lowest come from the remaining messages, so a session with k < 2n
    scored messages yields k points (one message: a single "highest" point). Ties are broken by the
    earlier message. `rank` is 1 for the most extreme message of its kind. Messages without a
    reward (not scored) are never picked.
    """
    if n_per_session < 1:
        raise DialError(f"critical_points: n_per_session must be >= 1 (got {n_per_session})")
    scored = rewards[np.isfinite(rewards["reward"].astype("float64"))]
    rows = []
    for session_id, group in scored.groupby("session_id", sort=True):
        by_reward = group.sort_values(["reward", "turn_index"], ascending=[False, True], kind="stable")
        highest = by_reward.head(n_per_session)
        rest = group.drop(index=highest.index).sort_values(["reward", "turn_index"], ascending=[True, True], kind="stable")
        lowest = rest.head(n_per_session)
        for kind, picked in (("highest", highest), ("lowest", lowest)):
            for rank, row in enumerate(picked.itertuples(index=False), start=1):
                rows.append(
                    {
                        "session_id": session_id,
                        "turn_index": int(row.turn_index),
                        "user_turn_number": int(row.user_turn_number),
                        "reward": float(row.reward),
                        "kind": kind,
                        "rank": rank,
                    }
                )
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(CRITICAL_COLUMNS, [str, int, int, float, str, int])})
    return pd.DataFrame(rows, columns=CRITICAL_COLUMNS)
