"""SFT training samples by flipping the dialogue (METHOD.md §3, UserLM).

Every real user *turn* is one sample: context + the session so far → that turn, i.e. the
consecutive user messages before the next chatbot message (a burst), joined by the message
separator (`dial.prompting.join_user_turn`), so the simulator learns to send bursts as real users
do. Each session has one end-of-conversation sample (`is_end`): after its last chatbot message,
context + the whole session → the end marker; when the session ends with a user turn instead, that
turn's sample carries the end marker as its last piece (the user wrote it, then left). Loss is on
the completion only (trl's prompt-completion format does that by default). In the prompt, every
earlier user turn is one assistant message in that same joined form (`simulator_messages`), so a
session's end sample (its prompt plus completion) is the whole session as the simulator writes it:
SFT with `sft.unit: session` trains on it as one sequence.

A real message that contains the separator or the end marker, as written or malformed the way
`parse_user_turn` reads them ("|msg|>"), would read back as other messages: its sample is skipped
and counted (`samples_with_separator_in_a_message_skipped`), never corrupted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from dial.checks import CheckError
from dial.params import SftSamplesParams
from dial.prompting import contains_marker, join_user_turn, simulator_messages
from dial.schemas import SftSamplesSchema


class ChatRenderer:
    """Renders prompts/completions with the simulator's chat template and counts their tokens.

    Methods take batches: one template call and one tokenizer call per session is much faster
    than one per sample (each call carries fixed overhead).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def prompt_texts(self, prompts: list[list[dict[str, str]]]) -> list[str]:
        if not prompts:
            return []
        return self.tokenizer.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)

    def completion_texts(
        self, prompts: list[list[dict[str, str]]], completions: list[str], prompt_texts: list[str] | None = None
    ) -> list[str]:
        """What follows each prompt when its completion is appended (as trl tokenises it).
        Pass `prompt_texts` when already rendered, to avoid rendering them again."""
        if not prompts:
            return []
        if prompt_texts is None:
            prompt_texts = self.prompt_texts(prompts)
        fulls = self.tokenizer.apply_chat_template(
            [prompt + [{"role": "assistant", "content": completion}] for prompt, completion in zip(prompts, completions)],
            tokenize=False,
        )
        if not all(full.startswith(prompt) for full, prompt in zip(fulls, prompt_texts)):
            raise ValueError("chat template is not prefix-stable: prompt + completion does not extend the prompt")
        return [full[len(prompt) :] for full, prompt in zip(fulls, prompt_texts)]

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: faster, no max-length warnings
            return [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def count_samples(self, prompts: list[list[dict[str, str]]], completions: list[str]) -> list[tuple[int, int]]:
        """(prompt tokens, completion tokens) for each sample."""
        prompt_texts = self.prompt_texts(prompts)
        counts = self.count(prompt_texts + self.completion_texts(prompts, completions, prompt_texts))
        return list(zip(counts[: len(prompts)], counts[len(prompts) :]))


def _sample_row(session, split, target, is_end, n_messages, prompt, completion, n_prompt, n_completion, n_dropped) -> dict:
    return {
        "sample_id": f"{session.session_id}:{'end' if is_end else f'{target:04d}'}",
        "session_id": session.session_id,
        "user_id": session.user_id,
        "split": split,
        "target_turn_index": target,
        "is_end": is_end,
        "n_target_messages": n_messages,
        "prompt": json.dumps(prompt, ensure_ascii=False),
        "completion": completion,
        "n_prompt_tokens": n_prompt,
        "n_completion_tokens": n_completion,
        "n_history_messages_dropped": n_dropped,
    }


def turn_targets(history: list[tuple[str, str]], end_marker: str, separator: str) -> list[tuple[int, str, bool, int]]:
    """(target_turn_index, completion, is_end, n_target_messages) of every sample of a session:
    one per user turn (a run of consecutive user messages), plus the end marker alone after the
    last message when that is the chatbot's (module docstring)."""
    targets = []
    start = 0
    while start < len(history):
        if history[start][0] != "user":
            start += 1
            continue
        stop = start
        while stop < len(history) and history[stop][0] == "user":
            stop += 1
        burst = [text for _, text in history[start:stop]]
        ends = stop == len(history)  # the session ends with this turn
        targets.append((start, join_user_turn(burst, ends, end_marker, separator), ends, len(burst)))
        start = stop
    if not history or history[-1][0] != "user":
        targets.append((len(history), end_marker, True, 0))
    return targets


def build_sft_samples(
    sessions: pd.DataFrame,
    messages: pd.DataFrame,
    contexts: pd.DataFrame,
    splits: pd.DataFrame,
    params: SftSamplesParams,
    tokenizer,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    renderer = ChatRenderer(tokenizer)
    history_of: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for session_id, role, text in messages.sort_values(["session_id", "turn_index"])[
        ["session_id", "role", "text"]
    ].itertuples(index=False):
        history_of[session_id].append((role, text))
    context_of = dict(zip(contexts["session_id"], contexts["context_text"]))
    split_of = dict(zip(splits["user_id"], splits["split"]))

    rows: list[dict] = []
    over_budget = with_separator = 0
    for session in tqdm(
        sessions.sort_values("session_id").itertuples(index=False),
        total=len(sessions),
        desc="sft samples",
        unit="session",
        disable=not progress,
    ):
        history = history_of[session.session_id]
        context = context_of[session.session_id]
        split = split_of[session.user_id]
        targets = []
        for target, completion, is_end, n_messages in turn_targets(history, params.end_marker, params.message_separator):
            if any(contains_marker(text, params.end_marker, params.message_separator) for _, text in history[target : target + n_messages]):
                with_separator += 1  # would read back as other messages than the user sent
                continue
            targets.append((target, completion, is_end, n_messages))
        if not targets:
            continue
        fast = _additive_counts(renderer, context, history, targets, params.max_tokens, params.message_separator)
        if fast is not None:
            dropped, counts = fast
        else:  # a template whose messages do not render independently: exact, slower path
            block_tokens = _message_block_tokens(renderer, context, history + [("user", params.end_marker)])
            dropped = [_estimate_drop(block_tokens, target, params.max_tokens) for target, *_ in targets]
            counts = _exact_counts(renderer, context, history, targets, dropped, params.max_tokens, params.message_separator)
        for i, (target, completion, is_end, n_messages) in enumerate(targets):
            n_prompt, n_completion = counts[i]
            if n_prompt + n_completion > params.max_tokens:
                over_budget += 1  # even with no history the context + message do not fit
                continue
            prompt = simulator_messages(context, history[dropped[i] : target], params.message_separator)
            rows.append(
                _sample_row(session, split, target, is_end, n_messages, prompt, completion, n_prompt, n_completion, dropped[i])
            )

    samples = pd.DataFrame(rows, columns=list(SftSamplesSchema.to_schema().columns))
    report = _report(samples, over_budget, with_separator, params)
    return samples, report


def _additive_counts(
    renderer: ChatRenderer, context: str, history: list[tuple[str, str]], targets, max_tokens: int, separator: str
):
    """Exact (dropped, (prompt, completion) counts) for all samples of a session in O(messages).

    Chat templates such as ChatML render each message as its own block starting with a special
    token, so the tokenizer splits the text there and token counts add up across blocks: a prompt
    is head + blocks[dropped:target] + generation prompt, a completion what follows the generation
    prompt in its own assistant block. A block is one rendered message of `simulator_messages`: a
    whole user turn (its messages joined) or one chatbot message; history is dropped a block at a
    time, so `dropped` (in messages) is always a block's first message. Each block is rendered and
    tokenised once instead of once per sample (quadratic in a long session). Returns None when the
    template does not render that way; the result is checked exactly on the session's longest
    sample.
    """
    tokenizer = renderer.tokenizer
    empty = [{"role": "system", "content": ""}]
    flipped = simulator_messages("", history, separator)[1:]
    block_starts = [i for i in range(len(history)) if i == 0 or history[i][0] != "user" or history[i - 1][0] != "user"]
    block_of_start = {start: block for block, start in enumerate(block_starts)}
    block_of_start[len(history)] = len(block_starts)
    completion_messages = [{"role": "assistant", "content": completion} for _, completion, *_ in targets]
    rendered = tokenizer.apply_chat_template(
        [[{"role": "system", "content": context}], empty] + [empty + [message] for message in flipped + completion_messages],
        tokenize=False,
    )
    head, empty_head, singles = rendered[0], rendered[1], rendered[2:]
    generation = tokenizer.apply_chat_template([empty], tokenize=False, add_generation_prompt=True)[0]
    if not generation.startswith(empty_head) or not all(single.startswith(empty_head) for single in singles):
        return None
    generation = generation[len(empty_head) :]
    blocks = [single[len(empty_head) :] for single in singles[: len(flipped)]]
    completion_blocks = [single[len(empty_head) :] for single in singles[len(flipped) :]]
    if not all(block.startswith(generation) for block in completion_blocks):
        return None
    completions = [block[len(generation) :] for block in completion_blocks]
    counts = renderer.count([head, generation] + blocks + completions)
    n_head, n_generation = counts[0], counts[1]
    n_blocks = counts[2 : 2 + len(blocks)]
    n_completions = counts[2 + len(blocks) :]
    before = [0]  # before[i] = tokens of blocks[:i]
    for n in n_blocks:
        before.append(before[-1] + n)

    dropped, sample_counts = [], []
    for (target, *_), n_completion in zip(targets, n_completions):
        last = block_of_start[target]  # a target is a user turn's first message (or the end)
        drop = 0
        # Fewest oldest blocks dropped so the sample fits (all of them if it never fits).
        while drop < last and n_head + before[last] - before[drop] + n_generation + n_completion > max_tokens:
            drop += 1
        dropped.append(block_starts[drop] if drop < last else target)
        sample_counts.append((n_head + before[last] - before[drop] + n_generation, n_completion))

    # Check the assumption exactly on the sample with the longest kept history.
    longest = max(range(len(targets)), key=lambda i: targets[i][0] - dropped[i])
    target, completion, *_ = targets[longest]
    prompt = simulator_messages(context, history[dropped[longest] : target], separator)
    (prompt_text,) = renderer.prompt_texts([prompt])
    first, last = block_of_start[dropped[longest]], block_of_start[target]
    if prompt_text != head + "".join(blocks[first:last]) + generation:
        return None
    if renderer.count_samples([prompt], [completion])[0] != sample_counts[longest]:
        return None
    return dropped, sample_counts


def _message_block_tokens(renderer: ChatRenderer, context: str, history: list[tuple[str, str]]) -> list[int]:
    """Approximate tokens of [system, message 0, message 1, ...] as rendered by the template."""
    texts = [context] + [text for _, text in history]
    # Each rendered message costs its text plus a few template tokens (role header, end token).
    empty = renderer.tokenizer.apply_chat_template([{"role": "system", "content": ""}], tokenize=False)
    overhead = renderer.count([empty])[0]
    return [n + overhead for n in renderer.count(texts)]


def _exact_counts(renderer, context, history, targets, dropped, max_tokens, separator) -> list[tuple[int, int]]:
    """Exact (prompt, completion) token counts. Each estimated `dropped` is corrected in place to
    the fewest oldest messages whose removal makes the sample fit, by a binary search batched
    across samples (token counts only shrink as more messages are dropped)."""
    cache: dict[tuple[int, int], tuple[int, int]] = {}

    def fits(queries: list[tuple[int, int]]) -> list[bool]:
        missing = [(i, d) for i, d in queries if (i, d) not in cache]
        prompts = [simulator_messages(context, history[d : targets[i][0]], separator) for i, d in missing]
        cache.update(zip(missing, renderer.count_samples(prompts, [targets[i][1] for i, _ in missing])))
        return [sum(cache[query]) <= max_tokens for query in queries]

    bounds = {}
    for i, ok in enumerate(fits(list(enumerate(dropped)))):
        if ok and dropped[i] > 0:
            bounds[i] = [0, dropped[i]]  # fits at the estimate: maybe with fewer dropped
        elif not ok and dropped[i] < targets[i][0]:
            bounds[i] = [dropped[i] + 1, targets[i][0]]  # needs more dropped
    while bounds:
        active = [i for i, (lo, hi) in bounds.items() if lo < hi]
        mids = [(i, (bounds[i][0] + bounds[i][1]) // 2) for i in active]
        for (i, mid), ok in zip(mids, fits(mids)):
            if ok:
                bounds[i][1] = mid
            else:
                bounds[i][0] = mid + 1
        for i in [i for i, (lo, hi) in bounds.items() if lo >= hi]:
            dropped[i] = bounds.pop(i)[0]
    fits(list(enumerate(dropped)))  # make sure every final choice is counted
    return [cache[(i, d)] for i, d in enumerate(dropped)]


def _estimate_drop(block_tokens: list[int], target: int, max_tokens: int) -> int:
    """How many of the oldest history messages to drop so context + history[:target] + the
    completion (block target + 1) fit; an estimate the caller refines with exact counts."""
    total = block_tokens[0] + sum(block_tokens[1 : target + 2])
    dropped = 0
    while total > max_tokens and dropped < target:
        total -= block_tokens[1 + dropped]
        dropped += 1
    return dropped


def _report(samples: pd.DataFrame, over_budget: int, with_separator: int, params: SftSamplesParams) -> dict:
    report: dict = {
        "max_tokens": params.max_tokens,
        "end_marker": params.end_marker,
        "message_separator": params.message_separator,
    }
    report["samples_over_budget_skipped"] = over_budget
    report["samples_with_separator_in_a_message_skipped"] = with_separator
    if samples.empty:
        report["samples"] = 0
        return report
    total_tokens = samples["n_prompt_tokens"] + samples["n_completion_tokens"]
    report.update(
        samples=int(len(samples)),
        end_samples=int(samples["is_end"].sum()),
        burst_samples=int((samples["n_target_messages"] > 1).sum()),
        samples_with_history_dropped=int((samples["n_history_messages_dropped"] > 0).sum()),
        tokens_mean=round(float(total_tokens.mean()), 1),
        tokens_max=int(total_tokens.max()),
        per_split={
            split: {
                "samples": int((samples["split"] == split).sum()),
                "completion_tokens": int(samples.loc[samples["split"] == split, "n_completion_tokens"].sum()),
            }
            for split in ("train", "valid", "test")
        },
    )
    return report

def run_sft_samples(
    params: SftSamplesParams,
    scrubbed_dir: Path,
    contexts_path: Path,
    splits_path: Path,
    model_dir: Path,
    out_path: Path,
    report_path: Path,
) -> pd.DataFrame:
    """Stage: sessions + contexts + splits → flipped-dialogue SFT samples."""
    from dial import io, paths
    from dial.checks import assert_checks
    from dial.models import load_tokenizer

    sessions = io.SESSIONS.read(paths.sessions_file(scrubbed_dir))
    messages = io.MESSAGES.read(paths.messages_file(scrubbed_dir))
    contexts = io.CONTEXTS.read(contexts_path)
    splits = io.SPLITS.read(splits_path)
    assert_checks(
        {"sessions": sessions, "messages": messages, "contexts": contexts, "splits": splits},
        ["contexts_cover_sessions", "turns_contiguous", "splits_disjoint"],
        where=str(out_path),
    )
    missing = sorted(set(sessions["user_id"]) - set(splits["user_id"]))
    if missing:
        raise CheckError(f"{splits_path}: {len(missing)} user(s) without a split, e.g. {missing[:3]}")
    samples, report = build_sft_samples(sessions, messages, contexts, splits, params, load_tokenizer(model_dir))
    assert_checks(
        {"sft_samples": samples, "splits": splits, "sessions": sessions},
        ["samples_within_budget", "samples_split_matches_user", "samples_sessions_exist"],
        limits={"max_sample_tokens": params.max_tokens},
        where=str(out_path),
    )
    io.SFT_SAMPLES.write(samples, out_path)
    io.write_json_atomic(report_path, report)
    return samples
