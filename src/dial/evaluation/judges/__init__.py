"""Pluggable judges: annotate sessions with issues (on chatbot messages) and user actions (on user
messages) from a taxonomy (METHOD.md §6; DIAL paper §4.3.2, appendices D and E; docs/judges.md).

    taxonomy = load_taxonomy(params.taxonomy)
    items, id_map = judge_inputs(messages, salt=params.id_salt)     # blind, opaque item ids
    with build_judge(params, taxonomy) as judge:
        issues, actions = judge.annotate(items, progress=True)      # ISSUES / USER_ACTIONS artifacts

Backends: `rules` (default; offline, deterministic text detectors, `rules.py`) and `openai` (an LLM
behind any OpenAI-compatible endpoint, with an on-disk cache, `openai.py`).
"""

from __future__ import annotations

from dial.errors import DialError
from dial.evaluation.judges.base import (
    ACTION_COLUMNS,
    ISSUE_COLUMNS,
    Judge,
    JudgeEndpointParams,
    JudgeInput,
    JudgeParams,
    judge_inputs,
    opaque_id,
)
from dial.evaluation.taxonomy import Taxonomy

__all__ = [
    "ACTION_COLUMNS",
    "ISSUE_COLUMNS",
    "Judge",
    "JudgeEndpointParams",
    "JudgeInput",
    "JudgeParams",
    "build_judge",
    "judge_inputs",
    "opaque_id",
]


def build_judge(params: JudgeParams, taxonomy: Taxonomy) -> Judge:
    """The judge `params.backend` names, over `taxonomy`. `cache_dir` is used as given (the stage
    resolves it against the repository root)."""
    if params.backend == "rules":
        from dial.evaluation.judges.rules import RulesJudge

        return RulesJudge(taxonomy)
    if params.backend == "openai":
        from dial.evaluation.judges.openai import OpenAIJudge

        return OpenAIJudge(params.openai, taxonomy, params.cache_dir, params.max_invalid_replies)
    raise DialError(f"judge: unknown backend {params.backend!r} (expected rules or openai)")
