"""DPO step on the tiny offline model: the reference policy is the previous simulator, outputs,
carrying forward when there are no pairs, resume, pair selection."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from trainer_helpers import InterruptAt, Interrupted, RecordStart, adapter_weights

torch.set_num_threads(1)  # the tiny model gains nothing from threads; the machine is shared

from dial import io  # noqa: E402
from dial.errors import DialError  # noqa: E402
from dial.params import LoraParams  # noqa: E402
from dial.sft_samples import ChatRenderer  # noqa: E402
from dial.training.common import lora_config, save_adapter  # noqa: E402
from dial.training.dpo import (  # noqa: E402
    MANIFEST,
    DpoParams,
    _check_reference_is_previous_adapter,
    build_dpo_trainer,
    read_pairs,
    run_dpo,
    select_train_pairs,
    resolve_simulator_adapter,
)

WORDS = "hey so I feel tired today and my job is a lot lately maybe a walk would help thanks bye".split()
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def synthetic_pairs(tokenizer, n: int = 6) -> pd.DataFrame:
    """preference_pairs rows: a flipped-dialogue prompt, a chosen and a rejected user message."""
    prompts, chosen, rejected = [], [], []
    for i in range(n):
        prompts.append(
            [
                {"role": "system", "content": f"profile {i}: " + " ".join(WORDS[i : i + 8])},
                {"role": "assistant", "content": "hi there"},
                {"role": "user", "content": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(6))},
            ]
        )
        chosen.append(" ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(3 + i % 3)))
        rejected.append(" ".join(WORDS[(3 * i + 5 + k) % len(WORDS)] for k in range(2 + i % 4)))
    renderer = ChatRenderer(tokenizer)
    chosen_counts = renderer.count_samples(prompts, chosen)
    rejected_counts = renderer.count_samples(prompts, rejected)
    return pd.DataFrame(
        {
            "pair_id": [f"s{i:03d}:1" for i in range(n)],
            "session_id": [f"s{i:03d}" for i in range(n)],
            "turn_index": [1] * n,
            "kind": ["highest" if i % 2 else "lowest" for i in range(n)],
            "prompt": [json.dumps(prompt) for prompt in prompts],
            "chosen": chosen,
            "rejected": rejected,
            "chosen_reward": [0.5 + i for i in range(n)],
            "rejected_reward": [-0.5 - i for i in range(n)],
            "prompt_tokens": [p for p, _ in chosen_counts],
            "chosen_tokens": [c for _, c in chosen_counts],
            "rejected_tokens": [c for _, c in rejected_counts],
        }
    )


def tiny_params(**overrides) -> DpoParams:
    values = dict(learning_rate=1e-2, logging_steps=1, save_steps=2, precision="fp32", seed=0)
    values.update(overrides)
    return DpoParams(**values)


@pytest.fixture(scope="module")
def pairs_frame(tiny_tokenizer) -> pd.DataFrame:
    return synthetic_pairs(tiny_tokenizer)


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory, pairs_frame):
    return io.PREFERENCE_PAIRS.write(pairs_frame, tmp_path_factory.mktemp("dpo_data") / "pairs.parquet")


@pytest.fixture(scope="module")
def previous_adapter_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """A stand-in for simulator k: a LoRA whose B matrices are non-zero, so it differs from the base."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(base, lora_config(LoraParams()))
    out = tmp_path_factory.mktemp("previous") / "sft"
    out.mkdir()
    save_adapter(model, tiny_tokenizer, out)
    weights = load_file(str(out / ADAPTER_WEIGHTS))
    generator = torch.Generator().manual_seed(1)
    perturbed = {
        key: torch.randn(value.shape, generator=generator) if "lora_B" in key else value
        for key, value in weights.items()
    }
    save_file(perturbed, str(out / ADAPTER_WEIGHTS))
    (out / MANIFEST).write_text(json.dumps({"kind": "sft"}))
    return out


def run(tmp_path, pairs_path, tiny_model_dir, previous, name="run", params=None, **kwargs):
    out = tmp_path / name
    report = run_dpo(
        params or tiny_params(),
        pairs_path,
        tiny_model_dir,
        previous,
        out / "model",
        out / "dpo.json",
        out / "dpo" / "loss.csv",
        tmp_path / "checkpoints",
        progress=kwargs.pop("progress", False),
        **kwargs,
    )
    return out, report


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, pairs_path, tiny_model_dir, previous_adapter_dir):
    return run(tmp_path_factory.mktemp("dpo_first"), pairs_path, tiny_model_dir, previous_adapter_dir)


def completion_log_prob(model, tokenizer, prompt: list[dict], text: str) -> float:
    """log p(text | prompt) of the `assistant` turn (with its end-of-turn tokens), computed directly."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    token_log_probs = log_probs.gather(-1, ids[0, 1:, None])[:, 0]
    return float(token_log_probs[len(prompt_ids) - 1 :].sum())


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("previous", ["simulator", "zero-shot"])
def test_reference_policy_is_the_previous_simulator(
    previous, pairs_frame, tiny_model_dir, tiny_tokenizer, previous_adapter_dir, tmp_path
):
    """trl's reference log-probs during training (recovered from its logged metrics:
    ref = logps − rewards/β) are the previous simulator's, computed independently, not the base
    model's; with a zero-shot previous simulator they are the base model's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pair = pairs_frame.iloc[[0]]
    prompt = json.loads(pair["prompt"].iloc[0])
    beta = 0.5
    params = tiny_params(beta=beta, epochs=4.0, warmup_ratio=0.0, learning_rate=3e-2)
    adapter_dir = previous_adapter_dir if previous == "simulator" else None
    trainer = build_dpo_trainer(params, pair, tiny_model_dir, adapter_dir, tmp_path / "ckpt", "fp32")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "rewards/chosen" in entry]
    assert len(logs) == 4  # one pair, one step per epoch: every log is that pair

    def load_base():
        return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    base = load_base()
    simulator = PeftModel.from_pretrained(load_base(), str(previous_adapter_dir)).eval()
    expected_model = simulator if previous == "simulator" else base
    for side in ("chosen", "rejected"):
        text = pair[side].iloc[0]
        expected = completion_log_prob(expected_model, tiny_tokenizer, prompt, text)
        base_log_prob = completion_log_prob(base, tiny_tokenizer, prompt, text)
        simulator_log_prob = completion_log_prob(simulator, tiny_tokenizer, prompt, text)
        assert abs(simulator_log_prob - base_log_prob) > 0.05  # the previous simulator is not the base model
        for entry in logs:
            reference = entry[f"logps/{side}"] - entry[f"rewards/{side}"] / beta
            assert reference == pytest.approx(expected, abs=2e-4), (side, entry["step"])
        # Not vacuous: the policy moved away from the reference during training.
        assert abs(logs[-1][f"rewards/{side}"]) > 1e-2
    if previous == "simulator":
        # At the first step the policy is the previous simulator: zero implicit reward.
        assert logs[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
        # Without trl's "ref" copy the reference would silently be the base model: that is refused.
        trainer.model.delete_adapter("ref")
        with pytest.raises(DialError, match="reference policy would be the base model"):
            _check_reference_is_previous_adapter(trainer.model)


def test_run_trains_the_adapter_and_writes_manifest_report_and_loss_curve(
    first_run, previous_adapter_dir, tiny_model_dir
):
    out, report = first_run
    model_dir = out / "model"
    expected = ["adapter_config.json", ADAPTER_WEIGHTS, "tokenizer.json", "tokenizer_config.json", MANIFEST]
    for name in expected:
        assert (model_dir / name).is_file(), name
    assert all(path.is_file() for path in model_dir.iterdir())  # no "ref/" adapter subfolder, no checkpoints
    # The adapter was trained from the previous one: same tensors, changed values.
    before, after = adapter_weights(previous_adapter_dir), adapter_weights(model_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    assert resolve_simulator_adapter(model_dir) == model_dir
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["kind"] == "simulator" and manifest["skipped"] is False
    assert manifest["base_model"] == tiny_model_dir.as_posix()
    assert manifest["previous_simulator"] == previous_adapter_dir.as_posix()
    assert manifest["reference"] == previous_adapter_dir.as_posix()
    assert manifest["params"] == tiny_params().model_dump(mode="json")
    assert json.loads((out / "dpo.json").read_text()) == report
    assert report["pairs_available"] == report["pairs_used"] == 6
    assert report["pairs_skipped"] == 0 and report["pairs_used_by_kind"] == {"highest": 3, "lowest": 3}
    assert report["steps"] == 6 and report["precision"] == "fp32"
    assert 0 < report["trainable_params"] < report["total_params"]
    assert 0.0 <= report["final_rewards_accuracies"] <= 1.0
    assert report["first_train_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference at step 1
    lines = (out / "dpo" / "loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert report["final_train_loss"] == float(lines[-1].split(",")[1])
    assert list((out.parent / "checkpoints").iterdir()) == []  # published: checkpoints removed


def test_same_inputs_give_a_byte_identical_simulator_folder(
    first_run, pairs_path, tiny_model_dir, previous_adapter_dir, tmp_path
):
    out, report = first_run
    again, report_again = run(tmp_path, pairs_path, tiny_model_dir, previous_adapter_dir)
    assert report_again == report
    # DVC caches on the folder: no timestamps, absolute temp paths or set order may leak into it.
    files = sorted(path.name for path in (out / "model").iterdir())
    assert files == sorted(path.name for path in (again / "model").iterdir())
    assert all((out / "model" / name).read_bytes() == (again / "model" / name).read_bytes() for name in files)
    assert (again / "dpo" / "loss.csv").read_bytes() == (out / "dpo" / "loss.csv").read_bytes()
    assert (again / "dpo.json").read_bytes() == (out / "dpo.json").read_bytes()
    # A different seed (data order) gives a different adapter: the comparison above is not vacuous.
    other, _ = run(tmp_path, pairs_path, tiny_model_dir, previous_adapter_dir, name="seed1", params=tiny_params(seed=1))
    first, second = adapter_weights(out / "model"), adapter_weights(other / "model")
    assert any(not torch.equal(first[key], second[key]) for key in first)


def test_zero_pairs_carry_the_previous_simulator_forward(
    first_run, pairs_frame, tiny_model_dir, previous_adapter_dir, tmp_path
):
    empty = io.PREFERENCE_PAIRS.write(pairs_frame.iloc[0:0], tmp_path / "empty.parquet")
    out, report = run(tmp_path, empty, tiny_model_dir, previous_adapter_dir)
    model_dir = out / "model"
    assert report["skipped"] is True and report["pairs_available"] == 0 and report["steps"] == 0
    assert report["reason"] == "no preference pairs"
    for path in previous_adapter_dir.iterdir():
        if path.name != MANIFEST:
            assert (model_dir / path.name).read_bytes() == path.read_bytes(), path.name
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["skipped"] is True and manifest["reason"] == "no preference pairs"
    assert manifest["previous_simulator"] == previous_adapter_dir.as_posix()
    assert (out / "dpo" / "loss.csv").read_text() == "step,loss\n"
    assert json.loads((out / "dpo.json").read_text()) == report
    assert report.keys() == first_run[1].keys()  # the same metrics whether trained or skipped

    # The zero-shot simulator carried forward is "the base model": a manifest-only folder ...
    out, report = run(tmp_path, empty, tiny_model_dir, None, name="zero-shot")
    assert report["skipped"] is True
    assert sorted(path.name for path in (out / "model").iterdir()) == [MANIFEST]
    assert json.loads((out / "model" / MANIFEST).read_text())["adapter"] is None
    assert resolve_simulator_adapter(out / "model") is None
    # ... and the next iteration starting from it treats it as the base model.
    again, report = run(tmp_path, empty, tiny_model_dir, out / "model", name="next")
    assert sorted(path.name for path in (again / "model").iterdir()) == [MANIFEST]
    with pytest.raises(DialError, match="not a simulator folder"):
        resolve_simulator_adapter(tmp_path)


def test_interrupted_run_resumes_from_its_checkpoint(
    first_run, pairs_path, tiny_model_dir, previous_adapter_dir, tmp_path
):
    with pytest.raises(Interrupted):
        run(tmp_path, pairs_path, tiny_model_dir, previous_adapter_dir, callbacks=[InterruptAt(3)])
    assert not (tmp_path / "run" / "model").exists()  # nothing published
    (run_dir,) = (tmp_path / "checkpoints").iterdir()
    assert sorted(path.name for path in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]

    start = RecordStart()
    out, report = run(tmp_path, pairs_path, tiny_model_dir, previous_adapter_dir, callbacks=[start], progress=True)
    assert start.start_step == 2  # resumed, not restarted
    assert report == first_run[1]
    # Weights, optimizer, scheduler, RNG, data order and the reference copy are restored: the same
    # adapter as the uninterrupted run.
    uninterrupted, resumed = adapter_weights(first_run[0] / "model"), adapter_weights(out / "model")
    assert all(torch.allclose(resumed[key], uninterrupted[key], atol=1e-6) for key in uninterrupted)
    assert (out / "dpo" / "loss.csv").read_bytes() == (first_run[0] / "dpo" / "loss.csv").read_bytes()


def test_selection_draws_a_seeded_subset_independent_of_row_order(pairs_frame):
    frame = pd.concat([pairs_frame.assign(pair_id=pairs_frame["pair_id"] + f"-{k}") for k in range(5)])
    params = DpoParams(max_train_pairs=7, seed=0)
    selected, counts = select_train_pairs(frame, params)
    assert counts["pairs_available"] == len(frame) == 30
    assert counts["pairs_used"] == len(selected) == 7  # the budget is exact
    assert counts["pairs_skipped"] == 23
    assert list(selected["pair_id"]) == sorted(selected["pair_id"])
    assert counts["sequence_tokens_per_epoch"] == int(
        (2 * selected["prompt_tokens"] + selected["chosen_tokens"] + selected["rejected_tokens"]).sum()
    )
    same, _ = select_train_pairs(frame.sample(frac=1, random_state=3), params)
    assert list(same["pair_id"]) == list(selected["pair_id"])  # seeded, independent of row order
    other, _ = select_train_pairs(frame, params.model_copy(update={"seed": 1}))
    assert list(other["pair_id"]) != list(selected["pair_id"])
    everything, counts = select_train_pairs(frame, DpoParams())  # 0 = all pairs
    assert len(everything) == len(frame) and counts["pairs_skipped"] == 0


def test_bad_prompt_is_an_error_naming_row_and_field(pairs_frame, tmp_path):
    bad = pairs_frame.copy()
    bad.loc[2, "prompt"] = json.dumps([{"role": "system"}])  # a JSON list, but no content
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path, index=False)
    with pytest.raises(DialError, match=r"row 2 .*field 'prompt'"):
        read_pairs(path)


def test_default_params_are_the_papers():
    params = DpoParams()
    assert (params.beta, params.epochs, params.batch_size, params.learning_rate) == (1.0, 1.0, 1, 1e-5)
    assert (params.lr_scheduler, params.warmup_ratio, params.max_grad_norm, params.weight_decay) == (
        "constant_with_warmup",
        0.1,
        1.0,
        0.0,
    )
    assert (params.lora.r, params.lora.alpha, params.lora.target_modules) == (8, 16, "all-linear")
    assert params.loss_type == "sigmoid"


def test_two_process_ddp_run_matches_one_process_at_the_same_global_batch(pairs_path, tiny_model_dir, previous_adapter_dir, tmp_path):
    """`accelerate launch` with 2 processes (DDP over gloo on this CPU), 1 pair each, against one
    process with batches of 2: the same DPO step from the same reference, so the same adapter;
    only the main process writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_dpo_run.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [str(pairs_path), str(tiny_model_dir), str(previous_adapter_dir)]
    subprocess.run([sys.executable, str(script), *args, str(tmp_path / "one"), "2"], check=True, env=env, capture_output=True)
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         str(script), *args, str(tmp_path / "two"), "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "dpo.json").read_text()) for name in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps"] == two["steps"] == 1
    weights_one, weights_two = adapter_weights(tmp_path / "one" / "model"), adapter_weights(tmp_path / "two" / "model")
    previous = load_file(str(previous_adapter_dir / ADAPTER_WEIGHTS))
    assert weights_one.keys() == weights_two.keys()
    assert all(torch.allclose(weights_one[k], weights_two[k], atol=1e-6) for k in weights_one)
    assert weights_two.keys() == previous.keys()
    assert any(not torch.allclose(weights_two[k], previous[k]) for k in weights_two)  # the step moved the previous adapter
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoints", "dpo", "dpo.json", "model"]

