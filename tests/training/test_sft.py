"""SFT stage on the tiny offline model: completion-only loss, whole-session sequences, outputs,
determinism, resume, sample selection, precision resolution."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from transformers import TrainerCallback
from trainer_helpers import InterruptAt, Interrupted, RecordStart, adapter_weights

from dial import io
from dial.params import SftParams, SftSamplesParams
from dial.prompting import parse_user_turn
from dial.sft_samples import ChatRenderer, build_sft_samples
from dial.training import common
from dial.training.common import resolve_precision
from dial.training.sft import (
    MANIFEST,
    build_sft_trainer,
    proportional_quotas,
    run_sft,
    select_eval_windows,
    select_train_samples,
    select_train_windows,
    session_dataset,
    session_windows,
)

WORDS = "hey so I feel tired today and my job is a lot lately maybe a walk would help thanks bye".split()
CAP = 120  # tokens: the long samples below are over it


def synthetic_samples(tokenizer, n_train: int = 10, n_long: int = 2, n_valid: int = 2) -> pd.DataFrame:
    """SftSamplesSchema rows: short train samples, `n_long` train samples over CAP, a few valid ones."""
    specs = [("train", 1)] * n_train + [("train", 12)] * n_long + [("valid", 1)] * n_valid
    prompts, completions = [], []
    for i, (_, repeat) in enumerate(specs):
        chatbot_line = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6))
        prompts.append(
            [
                {"role": "system", "content": f"profile {i}: " + " ".join(WORDS[:8]) * repeat},
                {"role": "assistant", "content": "hi there"},
                {"role": "user", "content": chatbot_line},
            ]
        )
        completions.append(" ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(3 + i % 4)))
    counts = ChatRenderer(tokenizer).count_samples(prompts, completions)
    rows = []
    for i, ((split, _), prompt, completion, (n_prompt, n_completion)) in enumerate(
        zip(specs, prompts, completions, counts, strict=True)
    ):
        rows.append(
            {
                "sample_id": f"s{i:03d}:0001",
                "session_id": f"s{i:03d}",
                "user_id": f"u{i:03d}",
                "split": split,
                "target_turn_index": 1,
                "is_end": False,
                "n_target_messages": 1,
                "prompt": json.dumps(prompt),
                "completion": completion,
                "n_prompt_tokens": n_prompt,
                "n_completion_tokens": n_completion,
                "n_history_messages_dropped": 0,
            }
        )
    return pd.DataFrame(rows)


def tiny_params(**overrides) -> SftParams:
    """Turn samples (the synthetic samples above have no session structure); the session unit
    has its own tests below, on samples built from sessions."""
    values = dict(
        unit="turn",
        epochs=1.0,
        batch_size=2,
        learning_rate=1e-3,
        max_sample_tokens=CAP,
        logging_steps=1,
        save_steps=2,
        precision="fp32",
        seed=0,
    )
    values.update(overrides)
    return SftParams(**values)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and a busy machine makes OpenMP threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples_path(tmp_path_factory, tiny_tokenizer):
    samples = synthetic_samples(tiny_tokenizer)
    assert (samples["n_prompt_tokens"] + samples["n_completion_tokens"] > CAP).sum() == 2
    return io.SFT_SAMPLES.write(samples, tmp_path_factory.mktemp("sft_data") / "samples.parquet")


def run(tmp_path, samples_path, tiny_model_dir, name="run", params=None, **kwargs):
    out = tmp_path / name
    report = run_sft(
        params or tiny_params(),
        samples_path,
        tiny_model_dir,
        out / "model",
        out / "sft.json",
        out / "sft" / "loss.csv",
        tmp_path / "checkpoints",
        progress=kwargs.pop("progress", False),
        **kwargs,
    )
    return out, report


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, samples_path, tiny_model_dir):
    return run(tmp_path_factory.mktemp("sft_first"), samples_path, tiny_model_dir)


# --------------------------------------------------------------------------------------------


def test_labels_mask_the_prompt_and_keep_the_completion(tiny_model_dir, tiny_tokenizer, samples_path, tmp_path):
    train, _ = select_train_samples(io.SFT_SAMPLES.read(samples_path), tiny_params())
    trainer = build_sft_trainer(tiny_params(), train, tiny_model_dir, tmp_path / "ckpt", "fp32")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row in range(2):
        sample = train.iloc[row]
        n_prompt, n_completion = int(sample["n_prompt_tokens"]), int(sample["n_completion_tokens"])
        labels, input_ids = batch["labels"][row], batch["input_ids"][row]
        real = batch["attention_mask"][row].bool()
        assert int(real.sum()) == n_prompt + n_completion  # trl tokenises exactly as the samples stage counted
        assert (labels[:n_prompt] == -100).all()  # no loss on the context or the dialogue so far
        assert (labels[n_prompt : n_prompt + n_completion] == input_ids[n_prompt : n_prompt + n_completion]).all()
        assert (labels[~real] == -100).all()  # nor on padding
        trained_text = tiny_tokenizer.decode(labels[labels != -100])
        assert trained_text == sample["completion"] + "<|im_end|>\n"  # the user message and the end of turn


def test_labelled_positions_only_head_gives_the_full_loss(tiny_model_dir, samples_path, tmp_path):
    train, _ = select_train_samples(io.SFT_SAMPLES.read(samples_path), tiny_params())
    trainer = build_sft_trainer(tiny_params(), train, tiny_model_dir, tmp_path / "ckpt", "fp32")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    model = trainer.model
    common.score_labelled_positions_only(model)  # also on a device where build_sft_trainer did not
    fused = model(**batch, fused_lm_head=True)
    full = model(**batch)  # transformers' own loss over full logits
    assert torch.allclose(fused.loss, full.loss, atol=1e-5)
    fused.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_run_writes_adapter_manifest_reports_and_loss_curve(first_run, tiny_model_dir):
    out, report = first_run
    model_dir = out / "model"
    expected = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST]
    for name in expected:
        assert (model_dir / name).is_file(), name
    assert not any(path.name.startswith("checkpoint-") for path in model_dir.iterdir())
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["kind"] == "sft" and manifest["base_model"] == tiny_model_dir.as_posix()
    adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    # peft resolves "all-linear" into a set: stored sorted, so the file does not change with the hash seed
    assert adapter_config["target_modules"] == sorted(adapter_config["target_modules"])
    assert "is_local" not in json.loads((model_dir / "tokenizer_config.json").read_text())
    assert json.loads((out / "sft.json").read_text()) == report
    # 10 short train samples used, the 2 long ones skipped and counted; valid samples never used.
    assert report["train_samples_available"] == 12
    assert report["train_samples_over_cap_skipped"] == 2
    assert report["train_samples_used"] == 10
    assert report["steps"] == 5  # 10 samples / batch 2
    assert report["precision"] == "fp32"
    assert 0 < report["trainable_params"] < report["total_params"]
    lines = (out / "sft" / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert report["final_train_loss"] == float(lines[-1].split(",")[1])
    assert list((out.parent / "checkpoints").iterdir()) == []  # published: checkpoints removed


def test_same_inputs_give_identical_adapter_and_reports(first_run, samples_path, tiny_model_dir, tmp_path):
    out, report = first_run
    again, report_again = run(tmp_path, samples_path, tiny_model_dir)
    first, second = adapter_weights(out / "model"), adapter_weights(again / "model")
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert report_again == report
    # The whole published folder is byte-identical (DVC caches on it): no timestamps, paths or set order.
    files = sorted(path.name for path in (out / "model").iterdir())
    assert files == sorted(path.name for path in (again / "model").iterdir())
    assert all((out / "model" / name).read_bytes() == (again / "model" / name).read_bytes() for name in files)
    assert (again / "sft" / "loss.csv").read_bytes() == (out / "sft" / "loss.csv").read_bytes()
    assert (again / "sft.json").read_bytes() == (out / "sft.json").read_bytes()
    # A different seed gives a different adapter (the comparison above is not vacuous).
    other, _ = run(tmp_path, samples_path, tiny_model_dir, name="seed1", params=tiny_params(seed=1))
    assert not torch.equal(adapter_weights(other / "model")[next(iter(first))], first[next(iter(first))])


def test_interrupted_run_resumes_from_its_checkpoint(first_run, samples_path, tiny_model_dir, tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path, samples_path, tiny_model_dir, callbacks=[InterruptAt(3)])
    assert not (tmp_path / "run" / "model").exists()  # nothing published
    (run_dir,) = (tmp_path / "checkpoints").iterdir()
    assert sorted(path.name for path in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]

    start = RecordStart()
    out, report = run(tmp_path, samples_path, tiny_model_dir, callbacks=[start], progress=True)
    assert start.start_step == 2  # resumed, not restarted
    assert report["steps"] == 5
    assert (out / "model" / "adapter_model.safetensors").is_file()
    # Resuming restores weights, optimizer, scheduler, RNG and data order: same adapter as uninterrupted.
    uninterrupted = adapter_weights(first_run[0] / "model")
    resumed = adapter_weights(out / "model")
    assert all(torch.allclose(resumed[key], uninterrupted[key], atol=1e-6) for key in uninterrupted)
    assert (out / "sft" / "loss.csv").read_text().count("\n") == 6  # header + steps 1..5, history kept


def test_changed_params_do_not_resume_a_foreign_checkpoint(samples_path, tiny_model_dir, tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path, samples_path, tiny_model_dir, callbacks=[InterruptAt(3)])
    start = RecordStart()
    run(tmp_path, samples_path, tiny_model_dir, params=tiny_params(learning_rate=5e-4), callbacks=[start])
    assert start.start_step == 0
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_selection_skips_over_cap_then_draws_a_seeded_subset():
    n = 40
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "split": ["valid" if i % 10 == 0 else "train" for i in range(n)],
            "n_prompt_tokens": [500 if i % 4 == 1 else 50 for i in range(n)],
            "n_completion_tokens": [5] * n,
            "is_end": [False] * n,
            "n_target_messages": [1] * n,
        }
    )
    train = samples[samples["split"] == "train"]
    over = int((train["n_prompt_tokens"] > 100).sum())

    params = SftParams(max_sample_tokens=100, max_train_samples=7, seed=0)
    selected, counts = select_train_samples(samples, params)
    assert counts["train_samples_available"] == len(train)
    assert counts["train_samples_over_cap_skipped"] == over
    assert counts["train_samples_used"] == len(selected) == 7  # the budget is exact
    assert (selected["n_prompt_tokens"] + selected["n_completion_tokens"] <= 100).all()
    assert set(selected["split"]) == {"train"}
    assert list(selected["sample_id"]) == sorted(selected["sample_id"])
    same, _ = select_train_samples(samples.sample(frac=1, random_state=3), params)
    assert list(same["sample_id"]) == list(selected["sample_id"])  # seeded, independent of row order
    other, _ = select_train_samples(samples, params.model_copy(update={"seed": 1}))
    assert list(other["sample_id"]) != list(selected["sample_id"])

    everything, counts = select_train_samples(samples, SftParams())  # 0 = no cap, all samples
    assert len(everything) == len(train) and counts["train_samples_over_cap_skipped"] == 0


def stratified_samples(n_end: int, n_end_under_cap: int, n_message: int, n_burst: int = 0) -> pd.DataFrame:
    """Train samples: end samples with long prompts (only `n_end_under_cap` under a cap of 100
    tokens), message and burst samples all under it."""
    rows = [(f"e{i:03d}", True, 1, 50 if i < n_end_under_cap else 500) for i in range(n_end)]
    rows += [(f"m{i:03d}", False, 1, 50) for i in range(n_message)]
    rows += [(f"b{i:03d}", False, 3, 50) for i in range(n_burst)]
    return pd.DataFrame(
        {
            "sample_id": [row[0] for row in rows],
            "split": ["train"] * len(rows),
            "is_end": [row[1] for row in rows],
            "n_target_messages": [row[2] for row in rows],
            "n_prompt_tokens": [row[3] for row in rows],
            "n_completion_tokens": [5] * len(rows),
        }
    )


def test_quotas_are_proportional_by_largest_remainder():
    # 24 x 1/10 = 2.4 and 24 x 9/10 = 21.6: floors 2 and 21, the larger remainder (0.6) gets the last one.
    assert proportional_quotas({"end": 1, "message": 9}, 24) == {"end": 2, "message": 22}
    assert proportional_quotas({"end": 1, "message": 1}, 3) == {"end": 2, "message": 1}  # tie: name order


def test_selection_keeps_the_share_of_end_samples_that_the_cap_would_remove():
    samples = stratified_samples(n_end=40, n_end_under_cap=4, n_message=40)
    selected, counts = select_train_samples(samples, SftParams(max_sample_tokens=100, max_train_samples=8, seed=0))
    assert int(selected["is_end"].sum()) == 4 and len(selected) == 8  # half of all train samples are end samples
    assert (selected["n_prompt_tokens"] + selected["n_completion_tokens"] <= 100).all()
    assert counts["shares"]["end"] == {"available": 0.5, "selected": 0.5}
    assert counts["strata"]["end"] == {"available": 40, "under_cap": 4, "selected": 4}
    assert counts["train_samples_over_cap_skipped"] == 36


def test_selection_keeps_the_share_of_burst_samples():
    samples = stratified_samples(n_end=10, n_end_under_cap=10, n_message=60, n_burst=30)
    selected, counts = select_train_samples(samples, SftParams(max_sample_tokens=100, max_train_samples=10, seed=0))
    assert counts["shares"]["burst"] == {"available": 0.3, "selected": 0.3}
    assert counts["shares"]["end"] == {"available": 0.1, "selected": 0.1}
    assert int((selected["n_target_messages"] > 1).sum()) == 3


def test_selection_takes_fewer_samples_rather_than_break_the_shares():
    samples = stratified_samples(n_end=40, n_end_under_cap=4, n_message=40)
    selected, counts = select_train_samples(samples, SftParams(max_sample_tokens=100))  # all that keep the shares
    # 4 end samples under the cap hold half of the selection: 8 samples, not the 44 under the cap.
    assert counts["strata"]["end"]["selected"] == 4 and counts["strata"]["message"]["selected"] == 4
    assert len(selected) == 8


def test_a_stratum_with_no_sample_under_the_cap_is_reported_and_left_out():
    samples = stratified_samples(n_end=5, n_end_under_cap=0, n_message=20)
    selected, counts = select_train_samples(samples, SftParams(max_sample_tokens=100, max_train_samples=6))
    assert counts["strata_without_sample_under_cap"] == ["end"]
    assert len(selected) == 6 and not selected["is_end"].any()
    assert counts["shares"]["end"] == {"available": 0.2, "selected": 0.0}


def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if common.bf16_is_fast(cpu) else "fp32")
    monkeypatch.setattr(common, "bf16_is_fast", lambda device: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(common, "bf16_is_fast", lambda device: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto") in ("bf16", "fp32")  # on whatever device is present


class InterruptAtEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        raise Interrupted("killed after training, before publishing")


def test_run_killed_before_publishing_resumes_at_the_end(first_run, samples_path, tiny_model_dir, tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path, samples_path, tiny_model_dir, callbacks=[InterruptAtEnd()])
    start = RecordStart()
    out, report = run(tmp_path, samples_path, tiny_model_dir, callbacks=[start])
    assert start.start_step == 5  # the final checkpoint: nothing left to train
    assert report == first_run[1]
    uninterrupted, resumed = adapter_weights(first_run[0] / "model"), adapter_weights(out / "model")
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)


# --------------------------------------------------------------------------------------------
# unit: session: one sequence per session, loss on every user turn and the end


END, SEP = SftSamplesParams().end_marker, SftSamplesParams().message_separator


def session_corpus(n_sessions: int = 6, n_long: int = 1):
    """Real-shaped sessions: bursts, chatbot bursts, sessions ended by the chatbot or by the user;
    `n_long` of them far longer than the others."""
    rows = []
    for s in range(n_sessions):
        turns = [("user", f"hey {s}"), ("user", "you there?"), ("assistant", "yes, hi"), ("assistant", "how are you")]
        turns += [("user", " ".join(WORDS[s : s + 5])), ("assistant", "I see, tell me more")]
        if s % 2:
            turns += [("user", "ok thanks"), ("user", "bye")]  # the user ends with a burst
        if s < n_long:
            turns += [("assistant", " ".join(WORDS) * 3), ("user", " ".join(WORDS) * 3), ("assistant", "noted")]
        rows += [(f"s{s}", role, text) for role, text in turns]
    messages = pd.DataFrame(rows, columns=["session_id", "role", "text"])
    messages["turn_index"] = messages.groupby("session_id").cumcount()
    sessions = pd.DataFrame({"session_id": [f"s{s}" for s in range(n_sessions)], "user_id": [f"u{s}" for s in range(n_sessions)]})
    contexts = pd.DataFrame({"session_id": sessions["session_id"], "context_text": [f"profile {s}" for s in range(n_sessions)]})
    splits = pd.DataFrame({"user_id": sessions["user_id"], "split": ["train"] * (n_sessions - 1) + ["valid"]})
    return sessions, messages, contexts, splits


@pytest.fixture(scope="module")
def session_samples(tiny_tokenizer):
    samples, _ = build_sft_samples(*session_corpus(), SftSamplesParams(), tiny_tokenizer, progress=False)
    return samples


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels + [-100]:
        if label != -100:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


def test_a_session_sequence_labels_every_user_turn_and_its_end_as_turn_samples_do(session_samples, tiny_tokenizer):
    windows, counts = select_train_windows(session_samples, SftParams(unit="session"), tiny_tokenizer, END, SEP)
    dataset = session_dataset(windows, tiny_tokenizer)
    assert len(dataset) == len(windows) == 5 and counts["train_windows_used"] == 5  # no cap: a window per session
    for window, example in zip(windows, dataset):
        session_id = f"s{window[0]['content'].split()[-1]}"  # "profile 3" -> s3
        turn_samples = session_samples[session_samples["session_id"] == session_id].sort_values("target_turn_index")
        runs = labelled_runs(example["labels"])
        # One labelled run per turn sample of the session, in order, each exactly the tokens trl labels
        # for that sample's completion: the burst joined as the simulator writes it, the end marker last.
        assert [tiny_tokenizer.decode(run) for run in runs] == [c + "<|im_end|>\n" for c in turn_samples["completion"]]
        assert [len(run) for run in runs] == turn_samples["n_completion_tokens"].tolist()
        # Everything else (context, chatbot, role headers) carries no loss.
        assert sum(len(run) for run in runs) < len(example["input_ids"])
    # The burst round trip: the SFT target of a burst parses back into the messages the user sent.
    s1 = session_samples[(session_samples["session_id"] == "s1")].sort_values("target_turn_index")
    assert parse_user_turn(s1["completion"].iloc[0], END, SEP).messages == ("hey 1", "you there?")
    assert parse_user_turn(s1["completion"].iloc[-1], END, SEP) == parse_user_turn(f"ok thanks{SEP}bye{SEP}{END}", END, SEP)
    assert parse_user_turn(s1["completion"].iloc[-1], END, SEP).ends
    assert counts["shares"]["end"]["selected"] == round(5 / len(session_samples[session_samples["split"] == "train"]), 6)


def test_windows_put_every_user_turn_and_ending_in_exactly_one_window_under_the_cap(session_samples, tiny_tokenizer):
    renderer = ChatRenderer(tiny_tokenizer)

    def whole_session(session_id):
        (row,) = session_samples[(session_samples["session_id"] == session_id) & session_samples["is_end"]].itertuples(index=False)
        session = json.loads(row.prompt) + [{"role": "assistant", "content": row.completion}]
        return session, renderer.count(tiny_tokenizer.apply_chat_template([session], tokenize=False))[0]

    session, n_tokens = whole_session("s1")
    cap = n_tokens * 2 // 3
    windows, unfit = session_windows(renderer, session, cap)
    assert len(windows) == 2 and unfit == 0
    for window in windows:
        assert window[0] == session[0]  # every window reads the context
        assert window[-1]["role"] == "assistant"  # and ends with what the user wrote
        assert renderer.count(tiny_tokenizer.apply_chat_template([window], tokenize=False))[0] <= cap
    assert [m for w in windows for m in w[1:]] == session[1:]  # consecutive, nothing lost or repeated
    # Cut from the end: the ending's window is as long as fits (one more turn before it would not),
    # the short remainder is the session's start.
    system, body = session[0], session[1:]  # burst, chatbot, chatbot, turn, chatbot, burst + ending
    assert [m["role"] for m in body] == ["assistant", "user", "user", "assistant", "user", "assistant"]
    assert windows == [[system, *body[:4]], [system, *body[4:]]]
    # the next longer last window (from right after the first burst) would not fit
    assert renderer.count(tiny_tokenizer.apply_chat_template([[system, *body[1:]]], tokenize=False))[0] > cap
    assert session_windows(renderer, session, 0) == ([session], 0)
    # s0's long user message fits no window: counted, and the turns around it still trained on.
    long_session, n_tokens = whole_session("s0")
    windows, unfit = session_windows(renderer, long_session, cap)
    assert unfit == 1 and windows and all(m["content"] != " ".join(WORDS) * 3 for w in windows for m in w)


def test_window_selection_draws_a_seeded_subset_and_reports_what_it_teaches(session_samples, tiny_tokenizer):
    params = SftParams(unit="session", max_sample_tokens=60, max_train_samples=4, seed=1)
    kept, counts = select_train_windows(session_samples, params, tiny_tokenizer, END, SEP)
    everything, _ = select_train_windows(session_samples, params.model_copy(update={"max_train_samples": 0}), tiny_tokenizer, END, SEP)
    assert counts["train_sessions"] == 5 and counts["train_windows_available"] == len(everything) > 4
    assert len(kept) == 4 and all(window in everything for window in kept)
    assert select_train_windows(session_samples, params, tiny_tokenizer, END, SEP)[0] == kept
    train_targets = session_samples[session_samples["split"] == "train"]
    assert counts["train_samples_available"] == len(train_targets) - counts["train_turns_in_no_window"]
    assert counts["shares"]["burst"]["available"] is not None


def test_session_run_trains_on_every_turn(session_samples, tiny_model_dir, tmp_path):
    path = io.SFT_SAMPLES.write(session_samples, tmp_path / "samples.parquet")
    params = tiny_params(unit="session", max_sample_tokens=0, batch_size=2)
    out, report = run(tmp_path, path, tiny_model_dir, params=params)
    assert report["unit"] == "session" and report["train_windows_used"] == 5 and report["steps"] == 3
    turns = session_samples[session_samples["split"] == "train"]
    assert report["train_samples_used"] == len(turns)
    assert report["completion_tokens_per_epoch"] == int(turns["n_completion_tokens"].sum())
    assert (out / "model" / "adapter_model.safetensors").is_file()


def heldout_loss(model_dir, base_dir, windows, tokenizer) -> float:
    """The mean over `windows` of each window's mean loss on user turns, under a saved adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(model_dir)).eval()
    losses = []
    with torch.no_grad():
        for example in session_dataset(windows, tokenizer):
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def test_heldout_curve_starts_at_the_base_model_and_the_best_adapter_is_kept(session_samples, tiny_model_dir, tiny_tokenizer, tmp_path):
    path = io.SFT_SAMPLES.write(session_samples, tmp_path / "samples.parquet")
    # A learning rate this high makes the held-out loss worse after a few steps: training must stop
    # `patience` evaluations after its best and publish the best adapter, not the last.
    params = tiny_params(unit="session", max_sample_tokens=0, batch_size=1, epochs=8, learning_rate=0.05,
                         eval_steps=1, early_stopping_patience=2)
    out, report = run(tmp_path, path, tiny_model_dir, params=params)
    heldout = report["heldout"]
    steps = [point["step"] for point in heldout["curve"]]
    assert steps[0] == 0 and steps == list(range(len(steps)))  # before training, then every step
    assert heldout["windows"] == 1  # the valid split's one session
    assert all(point["perplexity"] == pytest.approx(math.exp(point["loss"]), rel=1e-4) for point in heldout["curve"])
    assert heldout["stopped_early"] and report["steps"] < 8 * 5  # 5 train windows, 8 epochs
    trained = heldout["curve"][1:]
    best = min(trained, key=lambda point: point["loss"])
    assert heldout["kept_step"] == heldout["best_step"] == best["step"]
    assert all(point["loss"] >= best["loss"] for point in trained[-2:])  # patience 2: no new best in the last two
    windows = select_eval_windows(session_samples, params, tiny_tokenizer)
    assert heldout_loss(out / "model", tiny_model_dir, windows, tiny_tokenizer) == pytest.approx(best["loss"], rel=1e-4)


def test_early_stopping_needs_the_heldout_curve():
    with pytest.raises(ValueError, match="eval_steps"):
        SftParams(unit="session", early_stopping_patience=2)
    with pytest.raises(ValueError, match="unit: session"):
        SftParams(unit="turn", eval_steps=5)


def test_two_process_ddp_run_matches_one_process_at_the_same_global_batch(session_samples, tiny_model_dir, tmp_path):
    """`accelerate launch` with 2 processes (DDP over gloo on this CPU), 1 window each, against one
    process with batches of 2: the same step, so the same adapter; only one process writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = io.SFT_SAMPLES.write(session_samples, tmp_path / "samples.parquet")
    script = Path(__file__).with_name("ddp_sft_run.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(path), str(tiny_model_dir), str(tmp_path / "one"), "2"],
                   check=True, env=env, capture_output=True)
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         str(script), str(path), str(tiny_model_dir), str(tmp_path / "two"), "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "sft.json").read_text()) for name in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps"] == two["steps"] == 1
    weights_one, weights_two = adapter_weights(tmp_path / "one" / "model"), adapter_weights(tmp_path / "two" / "model")
    assert weights_one.keys() == weights_two.keys()
    assert all(torch.allclose(weights_one[k], weights_two[k], atol=1e-6) for k in weights_one)
    assert any(not torch.allclose(weights_two[k], torch.zeros_like(weights_two[k])) for k in weights_two if "lora_B" in k)  # it trained
    # Written once: one published folder, no staging folder left by a second writer, checkpoints gone.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoints", "model", "sft", "sft.json"]
    assert not any((tmp_path / "two" / "checkpoints").iterdir())
