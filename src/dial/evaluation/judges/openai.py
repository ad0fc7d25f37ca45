"""The `openai` judge: an LLM behind any OpenAI-compatible chat-completions endpoint (vLLM, TGI,
llama.cpp server, `dial serve`, hosted APIs) annotates whole sessions, as the paper's GPT-5 judge
does (DIAL §4.3.2: the analyser reads the whole session and names the message of each issue).

One request per session. The system message holds the instructions and the whole taxonomy (every
group, category/action, definition and example, in file order); the user message holds the
transcript, one `[turn_index] USER|CHATBOT: text` line per message — nothing else: no session id,
no source, no simulator (see `base` on blindness). The reply must be one JSON object::

    {"issues": [{"turn_index": 5, "category": "Repetitive questions", "evidence": "..."}],
     "user_actions": [{"turn_index": 4, "action": "Asks for clarity"}]}

(a ```json fence or text around the object is tolerated). It is validated against the taxonomy
(category and action names, case-insensitive) and the session (an issue's turn must be a CHATBOT
message, an action's a USER message). An invalid reply is answered with the problem and the
request repeated, up to `max_invalid_replies` times; then the stage stops with an error naming the
item. Endpoint failures are retried by `dial.openai_client` (backoff) and then also stop the stage.

Cache: each validated annotation is stored as JSON (atomic write) under
`cache_dir/<key[:2]>/<key>.json`, key = sha256 of the judge config that shapes the answer (model,
temperature, max_tokens, seed), the prompt template version, the taxonomy's content and the
session's messages. The endpoint URL, key, timeouts and concurrency are not part of it: the same
model served elsewhere reuses the cache. A re-run with the same sessions sends no request. Delete
the directory (or bump `PROMPT_VERSION` when changing the prompt) to re-judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm.auto import tqdm

from dial.errors import DialError
from dial.evaluation.judges.base import (
    JudgeEndpointParams,
    Judge,
    JudgeInput,
    action_frame,
    check_unique_ids,
    incomplete_message_categories,
    issue_frame,
)
from dial.evaluation.taxonomy import Taxonomy
from dial.io import write_json_atomic
from dial.openai_client import EndpointError, chat_completion

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-prompt-v1"  # bump when the prompt text changes: it invalidates the cache
ROLE_NAMES = {"user": "USER", "assistant": "CHATBOT"}

INSTRUCTIONS = """\
You annotate one conversation between a USER and a CHATBOT (a support chatbot under test). Read the
whole conversation first: a chatbot message is often only problematic in the light of the user's
situation and of the user's later replies.

1. Issues: for each CHATBOT message that shows an issue of a category below, report the message's
   turn index, the exact category name and a short evidence (a quote or a reason). A message can
   have several issues; most messages have none. Report an issue only when the definition clearly
   applies.
2. User actions: for each USER message, report every action below that it shows (a message can
   have several actions, or none), with the message's turn index and the exact action name.

ISSUE CATEGORIES (for CHATBOT messages only)
{issues}

USER ACTIONS (for USER messages only)
{actions}

Reply with one JSON object and nothing else:
{{"issues": [{{"turn_index": <index of a CHATBOT message>, "category": "<category name>", "evidence": "<short quote or reason>"}}],
 "user_actions": [{{"turn_index": <index of a USER message>, "action": "<action name>"}}]}}
Use empty lists when nothing applies. Use only the names listed above."""

RETRY_PROMPT = "Your reply is invalid: {problem}. Reply again with the complete JSON object only, following the instructions."


class InvalidReply(ValueError):
    """A judge reply that is not valid JSON for the taxonomy and the session."""


def render_taxonomy(taxonomy: Taxonomy) -> tuple[str, str]:
    """(issue categories, user actions) as prompt text, grouped, in file order."""

    def block(groups) -> str:
        lines = []
        for group in groups:
            lines.append(f"## {group.name}" + (f" — {group.description}" if group.description else ""))
            for label in group.labels:
                line = f'- "{label.name}": {label.definition}'
                if label.example:
                    line += f" Example: {label.example}"
                lines.append(line)
        return "\n".join(lines)

    return block(taxonomy.issue_groups), block(taxonomy.action_groups)


def render_transcript(item: JudgeInput) -> str:
    lines = ["CONVERSATION"]
    for turn, role, text in item.messages:
        body = "\n    ".join(text.strip().splitlines())  # continuation lines indented under their turn
        lines.append(f"[{turn}] {ROLE_NAMES[role]}: {body}")
    return "\n".join(lines)


def build_prompt(taxonomy: Taxonomy, item: JudgeInput) -> list[dict[str, str]]:
    """The chat messages sent for one session (system: instructions + taxonomy; user: transcript)."""
    issues, actions = render_taxonomy(taxonomy)
    return [
        {"role": "system", "content": INSTRUCTIONS.format(issues=issues, actions=actions)},
        {"role": "user", "content": render_transcript(item)},
    ]


def _extract_json(reply: str) -> Any:
    text = reply.strip()
    if text.startswith("```"):  # ```json ... ``` fences
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise InvalidReply(f"no JSON object in the reply ({reply[:80]!r})")
    try:
        return json.loads(text[start: end + 1])
    except ValueError as exc:
        raise InvalidReply(f"not valid JSON ({exc})") from None


def _turn(entry: dict, where: str) -> int:
    value = entry.get("turn_index")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip().isdigit()):
        raise InvalidReply(f"{where}: turn_index must be an integer (got {value!r})")
    return int(value)


def parse_annotation(reply: str, item: JudgeInput, taxonomy: Taxonomy) -> tuple[list[dict], list[dict]]:
    """Validate a reply: (issues [{turn_index, group, category, evidence}], actions [{turn_index,
    group, action}]) with canonical names. Raises `InvalidReply` naming the first problem."""
    payload = _extract_json(reply)
    if not isinstance(payload, dict):
        raise InvalidReply("the reply must be a JSON object")
    unknown_keys = sorted(set(payload) - {"issues", "user_actions"})
    if unknown_keys or "issues" not in payload or "user_actions" not in payload:
        raise InvalidReply(f'the object must have exactly the keys "issues" and "user_actions" (got {sorted(payload)})')
    chatbot_turns, user_turns = item.turns("assistant"), item.turns("user")
    issues, actions = [], []
    for k, entry in enumerate(_list(payload, "issues")):
        where = f"issues[{k}]"
        if not isinstance(entry, dict):
            raise InvalidReply(f"{where} must be an object")
        turn = _turn(entry, where)
        if turn not in chatbot_turns:
            raise InvalidReply(f"{where}: turn_index {turn} is not a CHATBOT message (chatbot turns: {sorted(chatbot_turns)})")
        name = entry.get("category")
        category = taxonomy.category(name) if isinstance(name, str) else None
        if category is None:
            raise InvalidReply(f"{where}: unknown category {name!r}")
        evidence = entry.get("evidence", "")
        if evidence is None:
            evidence = ""
        if not isinstance(evidence, str):
            raise InvalidReply(f"{where}: evidence must be a string")
        issues.append({"turn_index": turn, "group": category.group, "category": category.name, "evidence": " ".join(evidence.split())})
    for k, entry in enumerate(_list(payload, "user_actions")):
        where = f"user_actions[{k}]"
        if not isinstance(entry, dict):
            raise InvalidReply(f"{where} must be an object")
        turn = _turn(entry, where)
        if turn not in user_turns:
            raise InvalidReply(f"{where}: turn_index {turn} is not a USER message (user turns: {sorted(user_turns)})")
        name = entry.get("action")
        action = taxonomy.action(name) if isinstance(name, str) else None
        if action is None:
            raise InvalidReply(f"{where}: unknown action {name!r}")
        actions.append({"turn_index": turn, "group": action.group, "action": action.name})
    return issues, actions


def _list(payload: dict, key: str) -> list:
    value = payload[key]
    if not isinstance(value, list):
        raise InvalidReply(f'"{key}" must be a list')
    return value


class OpenAIJudge(Judge):
    def __init__(self, endpoint: JudgeEndpointParams, taxonomy: Taxonomy, cache_dir: str | Path,
                 max_invalid_replies: int = 2) -> None:
        if not endpoint.model:
            raise DialError("judge openai: endpoint model is empty (set judge.openai.model)")
        self.endpoint = endpoint
        self.taxonomy = taxonomy
        self.cache_dir = Path(cache_dir)
        self.max_invalid_replies = max_invalid_replies
        self.name = f"openai:{endpoint.model}"
        if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
            log.warning("judge %s: environment variable %s is not set: requests go without an API key",
                        self.name, endpoint.api_key_env)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.endpoint.base_url!r}, model={self.endpoint.model!r})"

    # ---- cache

    def cache_key(self, item: JudgeInput) -> str:
        shaping = {
            "prompt_version": PROMPT_VERSION,
            "model": self.endpoint.model,
            "temperature": self.endpoint.temperature,
            "max_tokens": self.endpoint.max_tokens,
            "seed": self.endpoint.seed,
            "taxonomy": self.taxonomy.fingerprint(),
            "messages": [list(message) for message in item.messages],
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, item: JudgeInput, key: str) -> tuple[list[dict], list[dict]] | None:
        path = self._cache_path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            return parse_annotation(json.dumps({"issues": entry["issues"], "user_actions": entry["user_actions"]}), item, self.taxonomy)
        except (ValueError, KeyError, TypeError) as exc:  # a damaged entry is re-judged, never trusted
            log.warning("judge cache %s is unreadable (%s): judging again", path, exc)
            return None

    # ---- judging

    def annotate(self, items: Sequence[JudgeInput], progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        check_unique_ids(items)
        self.stats = {"items": len(items), "cache_hits": 0, "requests": 0, "invalid_replies": 0}
        results: dict[str, tuple[list[dict], list[dict]]] = {}
        todo = []
        for item in items:
            key = self.cache_key(item)
            cached = self._cached(item, key)
            if cached is None:
                todo.append((item, key))
            else:
                results[item.item_id] = cached
                self.stats["cache_hits"] += 1
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"judge {self.name}", unit="session", disable=not progress)
        failed = threading.Event()  # after a failure, items not started yet are skipped
        errors: dict[str, BaseException] = {}
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._judge_one, item, key, failed): item for item, key in todo}
            for future in as_completed(futures):
                item = futures[future]
                try:
                    result = future.result()
                except BaseException as exc:  # noqa: BLE001 (re-raised below, in item order)
                    failed.set()
                    errors[item.item_id] = exc
                    continue
                if result is not None:
                    results[item.item_id] = result
                    bar.update(1)
        bar.close()
        if errors:
            first = next(item for item, _ in todo if item.item_id in errors)
            raise errors[first.item_id]
        issues, actions = [], []
        incomplete = incomplete_message_categories(self.taxonomy)
        for item in items:
            item_issues, item_actions = results[item.item_id]
            # Not told of cut messages (that would unblind it); its verdict on them is dropped.
            item_issues = [
                row for row in item_issues if not (row["category"] in incomplete and row["turn_index"] in item.truncated_turns)
            ]
            issues += [{"item_id": item.item_id, **row, "judge": self.name} for row in item_issues]
            actions += [{"item_id": item.item_id, **row, "judge": self.name} for row in item_actions]
        return issue_frame(issues), action_frame(actions)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _judge_one(self, item: JudgeInput, key: str, failed: threading.Event) -> tuple[list[dict], list[dict]] | None:
        if failed.is_set():
            return None
        what = f"judge {self.name!r} item {item.item_id!r}"
        messages = build_prompt(self.taxonomy, item)
        problem = ""
        for attempt in range(self.max_invalid_replies + 1):
            self._count("requests")
            try:
                completion = chat_completion(
                    self.endpoint.base_url,
                    self.endpoint.model,
                    messages,
                    api_key_env=self.endpoint.api_key_env or None,
                    timeout_s=self.endpoint.timeout_s,
                    max_retries=self.endpoint.max_retries,
                    temperature=self.endpoint.temperature,
                    max_tokens=self.endpoint.max_tokens,
                    seed=self.endpoint.seed,
                    what=what,
                )
            except EndpointError as exc:
                raise DialError(f"{what}: {exc.detail}") from exc
            try:
                issues, actions = parse_annotation(completion.text, item, self.taxonomy)
            except InvalidReply as exc:
                problem = str(exc)
                self._count("invalid_replies")
                log.warning("%s: invalid reply %d/%d: %s", what, attempt + 1, self.max_invalid_replies + 1, problem)
                messages = messages[:2] + [
                    {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": RETRY_PROMPT.format(problem=problem)},
                ]
                continue
            write_json_atomic(self._cache_path(key), {
                "prompt_version": PROMPT_VERSION, "model": self.endpoint.model,
                "issues": [{k: row[k] for k in ("turn_index", "category", "evidence")} for row in issues],
                "user_actions": [{k: row[k] for k in ("turn_index", "action")} for row in actions],
                "reply": completion.text,
            })
            return issues, actions
        raise DialError(
            f"{what}: no valid annotation after {self.max_invalid_replies + 1} replies; last problem: {problem}"
        )
