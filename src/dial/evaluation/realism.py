"""Realism of the user role, after UserLM ("Flipping the Dialogue", §3; METHOD.md §7).

Words are those of `dial.evaluation.lexical.words` (lower-cased letters/digits/inner apostrophes).

First-turn diversity
    Over the first user message of every session of a group: distinct words / words, i.e. the
    share of unique 1-grams among all first-turn tokens (UserLM reports "% unique 1-grams": real
    users 94.01%, GPT-4o 74.42%). Higher = more varied openings; a simulator that opens every
    session with "hi, i need help" scores low. (UserLM's text also describes a pairwise Jaccard
    variant; we use the unique-1-gram share, which is what its numbers are.) Depends on the number
    of first turns, so compare groups of similar size.

Intent decomposition
    How much of the intent the user copies: for each user message, the share of its distinct
    content words (stop words removed, `STOP_WORDS`) that also occur in the session's *intent*. The
    intent must not come from the words of the session itself: the current-session summary is
    built from the real user's own messages of that session (the local summariser keeps their
    keywords), so against it real users would "overlap" by construction. The intent is therefore
    what the context held *before* the session (`intent_reference`): the session's topic line (the
    conversation prompt or the situation the user described before the chat, when the source has
    one), the long-term context and the previous-session summaries, taken from the context of the
    real session itself or of the real session a simulation was grounded on. Sessions whose
    reference is empty (a user's first session without a topic) are counted and left out. The
    group's value is the mean over user messages (micro-average); messages with no content word are
    counted and left out. Lower is more human (UserLM: humans 1.68%, UserLM-8B 2.69%).

Dialogue termination (F1 against real endings)
    For each held-out real session and each position right after a chatbot turn (after the last
    message of each run of chatbot messages: the user would speak next), the simulator is asked for
    the next user message given the real history so far. It "ends" when its output ends the
    conversation by the rule the simulation applies (`prompting.parse_user_turn`: the end marker
    anywhere in the output). The truth: the real user ended with that turn (no chatbot message
    follows it: nothing more, or one last user turn, which the simulator writes with the marker).
    Precision, recall and F1 of "ends" as the positive class over all positions (UserLM:
    UserLM-8B F1 63.5, prompted assistants 3–15). Positions whose prompt does not fit the model's window are counted, not scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dial.contexts import TOPIC_LABELS
from dial.errors import DialError
from dial.evaluation.lexical import user_texts_by_session, words
from dial.prompting import DEFAULT_MESSAGE_SEPARATOR, is_end_of_conversation, simulator_messages

log = logging.getLogger(__name__)

# A standard English stop-word list (NLTK's, with contractions split as our tokeniser keeps them).
STOP_WORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren aren't as at be because been before being
    below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down
    during each few for from further had hadn hadn't has hasn hasn't have haven haven't having he her here hers
    herself him himself his how i if in into is isn isn't it it's its itself just ll m ma me mightn mightn't
    more most mustn mustn't my myself needn needn't no nor not now o of off on once only or other our ours
    ourselves out over own re s same shan shan't she she's should should've shouldn shouldn't so some such t
    than that that'll the their theirs them themselves then there these they this those through to too under
    until up ve very was wasn wasn't we were weren weren't what when where which while who whom why will with
    won won't wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves i'm i've i'll i'd
    he's he'd he'll we're we've we'll we'd they're they've they'll they'd let's there's what's
    """.split()
)

# The labels `dial.contexts` puts before a session's topic line in its current summary.
TOPIC_LINE_LABELS = (*TOPIC_LABELS.values(), "Session topic")
INTENT_REFERENCE = "topic line, long-term context and previous-session summaries of the context (not this session's summary)"
INTENT_CONTEXT_COLUMNS = ("session_id", "current_summary", "long_term", "previous_summaries")

TERMINATION_COLUMNS = ["simulator_id", "session_id", "turn_index", "is_end", "predicted_end", "status", "generated"]
GENERATED, OVER_MAX_POSITIONS = "generated", "over_max_positions"
TERMINATION_STATUSES = (GENERATED, OVER_MAX_POSITIONS)


def content_words(text: str) -> list[str]:
    return [word for word in words(text) if word not in STOP_WORDS]


# --------------------------------------------------------------------------------------------
# First-turn diversity and intent decomposition
# --------------------------------------------------------------------------------------------


def first_turn_diversity(messages: pd.DataFrame, session_ids: Iterable[str] | None = None) -> dict:
    """Unique 1-grams / 1-grams over the first user message of each session (module docstring)."""
    texts = user_texts_by_session(messages, session_ids)
    first_turns = [found[0] for _, found in sorted(texts.items()) if found]
    tokens = [token for text in first_turns for token in words(text)]
    return {
        "value": len(set(tokens)) / len(tokens) if tokens else None,
        "n_first_turns": len(first_turns),
        "n_sessions_without_user_message": sum(1 for found in texts.values() if not found),
        "n_tokens": len(tokens),
        "n_types": len(set(tokens)),
    }


def intent_overlap(user_text: str, intent_text: str) -> float | None:
    """Share of the message's distinct content words that occur in the intent; None without any."""
    message = set(content_words(user_text))
    if not message:
        return None
    return len(message & set(words(intent_text))) / len(message)


def intent_reference(current_summary: str, long_term: str, previous_summaries: str) -> str:
    """The intent of a session that its own messages did not produce (module docstring): the topic
    line of the current summary, the long-term context and the previous summaries (a JSON list)."""
    first_line, _, rest = str(current_summary).partition("\n")
    topic = first_line if rest and first_line.startswith(tuple(f"{label}: " for label in TOPIC_LINE_LABELS)) else ""
    return "\n".join(part for part in (topic, str(long_term or ""), *json.loads(previous_summaries or "[]")) if part)


def intent_overlaps(
    messages: pd.DataFrame,
    grounding: pd.Series | dict,
    contexts: pd.DataFrame,
) -> tuple[dict[str, list[float]], int, int]:
    """(session_id → intent overlap of each user message with content words, messages without
    content words, sessions without a reference) over the sessions of `grounding` (session_id →
    grounding real session id). Sessions without a reference are left out of the map. A grounding
    session without a context is an error: the metric would silently shrink otherwise."""
    missing_columns = [c for c in INTENT_CONTEXT_COLUMNS if c not in contexts.columns]
    if missing_columns:
        raise DialError(f"intent_decomposition: contexts lack column(s) {missing_columns}")
    grounding = dict(grounding)
    reference_of = {
        str(row.session_id): intent_reference(row.current_summary, row.long_term, row.previous_summaries)
        for row in contexts[list(INTENT_CONTEXT_COLUMNS)].itertuples(index=False)
    }
    missing = sorted({g for g in grounding.values() if g not in reference_of})
    if missing:
        raise DialError(f"intent_decomposition: no context for grounding session(s) {missing[:5]}")
    texts = user_texts_by_session(messages, sorted(grounding))
    overlaps: dict[str, list[float]] = {}
    without_content = without_reference = 0
    for session_id, found in texts.items():
        reference = reference_of[grounding[session_id]]
        if not reference:
            without_reference += 1
            continue
        overlaps[session_id] = []
        for text in found:
            overlap = intent_overlap(text, reference)
            if overlap is None:
                without_content += 1
            else:
                overlaps[session_id].append(overlap)
    return overlaps, without_content, without_reference


def intent_decomposition(
    messages: pd.DataFrame,
    grounding: pd.Series | dict,
    contexts: pd.DataFrame,
) -> dict:
    """Mean intent overlap over the user messages of the sessions of `grounding` against the
    intent their context held before the session (module docstring)."""
    by_session, without_content, without_reference = intent_overlaps(messages, grounding, contexts)
    overlaps = [overlap for found in by_session.values() for overlap in found]
    return {
        "value": float(np.mean(overlaps)) if overlaps else None,
        "n_user_messages": len(overlaps) + without_content,
        "n_without_content_words": without_content,
        "n_sessions": len(by_session),
        "n_sessions_without_reference": without_reference,
        "reference": INTENT_REFERENCE,
    }


# --------------------------------------------------------------------------------------------
# Dialogue termination
# --------------------------------------------------------------------------------------------


def termination_positions(messages: pd.DataFrame, session_ids: Iterable[str]) -> pd.DataFrame:
    """Positions after a chatbot turn of each session: session_id, turn_index (the chatbot message
    after which the user would speak), is_end (the real user's next turn ends the conversation: no
    chatbot message follows, so the user wrote nothing more or one last turn, the way the SFT
    end samples put the marker; `dial.sft_samples`)."""
    wanted = {str(sid) for sid in session_ids}
    frame = messages[messages["session_id"].astype(str).isin(wanted)].sort_values(["session_id", "turn_index"], kind="stable")
    rows = []
    for session_id, group in frame.groupby("session_id", sort=True):
        roles = list(group["role"])
        turns = list(group["turn_index"])
        for i, role in enumerate(roles):
            if role != "assistant" or (i + 1 < len(roles) and roles[i + 1] == "assistant"):
                continue  # not the last message of a chatbot run
            rows.append({"session_id": str(session_id), "turn_index": int(turns[i]), "is_end": "assistant" not in roles[i + 1 :]})
    return pd.DataFrame(rows, columns=["session_id", "turn_index", "is_end"]).astype({"turn_index": "int64", "is_end": bool})


def _position_seed(seed: int, session_id: str, turn_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:termination:{session_id}:{turn_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def select_sessions(session_ids: Sequence[str], n_sessions: int, seed: int) -> list[str]:
    """A seeded, order-independent choice of `n_sessions` sessions (all when 0 or fewer exist)."""
    ranked = sorted({str(s) for s in session_ids}, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    chosen = ranked if n_sessions <= 0 else ranked[:n_sessions]
    return sorted(chosen)


def termination_predictions(
    generator,
    contexts: pd.DataFrame,
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    end_marker: str,
    decoding,
    seed: int,
    simulator_id: str = "",
    progress: bool = True,
    max_positions_per_session: int = 0,
    message_separator: str = DEFAULT_MESSAGE_SEPARATOR,
) -> pd.DataFrame:
    """Ask the simulator (`dial.simulation.generation.ChatGenerator`) at every termination position of the
    real `sessions` whether it ends the conversation (only the last `max_positions_per_session`
    positions of each session when > 0: the real ending and the turns just before it, which is
    where ending or not is decided; a long session otherwise costs one generation per turn). Batched in waves (the k-th position of every
    session together) with per-session prefix reuse; each position has its own seed, so the
    outputs do not depend on the batching.

    Returns TERMINATION_COLUMNS (the `termination_predictions` artifact; `simulator_id` is only
    copied into the rows): predicted_end = the output ends the conversation
    (`is_end_of_conversation`, the simulation's rule). Positions
    whose prompt plus `decoding.max_new_tokens` exceeds the model's window have status
    `over_max_positions` (predicted_end False, not scored by `termination_f1`)."""
    marker_tokens = len(generator.tokenizer(end_marker, add_special_tokens=False)["input_ids"])
    if decoding.max_new_tokens < marker_tokens:
        raise DialError(
            f"termination: max_new_tokens={decoding.max_new_tokens} cannot produce the end marker {end_marker!r} "
            f"({marker_tokens} tokens)"
        )
    context_of = dict(zip(contexts["session_id"].astype(str), contexts["context_text"]))
    session_ids = sorted(sessions["session_id"].astype(str))
    missing = [sid for sid in session_ids if sid not in context_of]
    if missing:
        raise DialError(f"termination: no context for real session(s) {missing[:5]}")
    positions = termination_positions(messages, session_ids)
    if max_positions_per_session > 0:
        positions = positions.groupby("session_id", sort=False).tail(max_positions_per_session).reset_index(drop=True)
    history_of = {
        str(sid): list(zip(group["turn_index"], group["role"], group["text"]))
        for sid, group in messages.sort_values(["session_id", "turn_index"]).groupby("session_id", sort=True)
    }
    conversations = [
        simulator_messages(
            context_of[row.session_id], [(role, text) for turn, role, text in history_of[row.session_id] if turn <= row.turn_index],
            message_separator,
        )
        for row in positions.itertuples(index=False)
    ]
    status = [GENERATED] * len(conversations)
    if generator.max_positions and conversations:
        for i, ids in enumerate(generator.prompt_ids(conversations)):
            if len(ids) + decoding.max_new_tokens > generator.max_positions:
                status[i] = OVER_MAX_POSITIONS
    todo = [i for i, s in enumerate(status) if s == GENERATED]
    if len(todo) < len(status):
        log.warning("termination: %d of %d positions exceed the model's window; not scored", len(status) - len(todo), len(status))
    seeds = [_position_seed(seed, row.session_id, row.turn_index) for row in positions.itertuples(index=False)]
    # Waves: the k-th position of every session together, each session keyed, so a position's
    # prompt continues the previous position's processed tokens (prefix reuse) instead of running
    # the whole context and history again: prefill grows with the session, not quadratically.
    rank = positions.groupby("session_id", sort=False).cumcount().to_numpy()
    keys = [f"termination:{row.session_id}" for row in positions.itertuples(index=False)]
    generated = [""] * len(status)
    waves = [[i for i in todo if rank[i] == k] for k in range(int(rank.max()) + 1 if len(rank) else 0)]
    try:
        for wave in tqdm(waves, desc="termination", unit="wave", disable=not progress):
            if not wave:
                continue
            outputs = generator.generate(
                [conversations[i] for i in wave], decoding, [seeds[i] for i in wave], cache_keys=[keys[i] for i in wave]
            )
            for i, output in zip(wave, outputs):
                generated[i] = output.text
    finally:
        generator.forget(sorted(set(keys)))
    result = positions.copy()
    result["predicted_end"] = [s == GENERATED and is_end_of_conversation(text, end_marker) for s, text in zip(status, generated)]
    result["status"] = status
    result["generated"] = generated
    result["simulator_id"] = simulator_id
    return result[TERMINATION_COLUMNS].reset_index(drop=True)


def termination_f1(predictions: pd.DataFrame) -> dict:
    """Precision, recall and F1 of predicted ends against real ends over the scored positions.
    Precision (recall) is None when nothing was predicted (no real end exists); F1 is 0 when
    precision or recall is 0 and None when both are undefined."""
    scored = predictions[predictions["status"] == GENERATED] if "status" in predictions else predictions
    truth = scored["is_end"].astype(bool).to_numpy()
    predicted = scored["predicted_end"].astype(bool).to_numpy()
    tp = int((truth & predicted).sum())
    n_pred, n_true = int(predicted.sum()), int(truth.sum())
    precision = tp / n_pred if n_pred else None
    recall = tp / n_true if n_true else None
    if precision is None and recall is None:
        f1 = None
    elif not precision or not recall:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_positions": int(len(scored)),
        "n_not_scored": int(len(predictions) - len(scored)),
        "n_real_ends": n_true,
        "n_predicted_ends": n_pred,
        "true_positives": tp,
        "n_sessions": int(scored["session_id"].nunique()) if len(scored) else 0,
    }
