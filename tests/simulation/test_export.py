"""`dial export`: a trained simulator as a merged checkpoint that a server loads like any chat model."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import ServeProcess

from dial.errors import DialError
from dial.openai_client import chat_completion
from dial.prompting import simulator_messages
from dial.simulation.export import CONVENTIONS_FILE, export_simulator

END, SEP = "<|endconversation|>", "<|msg|>"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter whose weights are not zero, so merging it changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / "sft"
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(folder))
    return folder


def logits(model_dir, ids, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_export_writes_a_merged_checkpoint_a_server_loads(tiny_model_dir, adapter_dir, tmp_path):
    metrics = {"sft.perplexity.value": 17.25, "sft.perplexity.value_ci_low": 14.1, "sft.perplexity.value_ci_high": 20.5,
               "sft.discriminator.overall.accuracy": 0.512, "sft.structure.words_per_user_message": 22.0,
               "real.structure.words_per_user_message": 18.2}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "data.json").write_text(json.dumps({"sessions_sampled": 300, "messages": 4000}))
    params = {"data": {"source": "esconv"}, "sft": {"learning_rate": 2e-4}, "dpo": {"beta": 1.0}}
    out = export_simulator("sft", tmp_path / "export", tiny_model_dir, adapter_dir, params, END, SEP,
                           metrics_file=tmp_path / "metrics.json", data_report_file=tmp_path / "data.json")

    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: no adapter to apply
    conventions = json.loads((out / CONVENTIONS_FILE).read_text())
    assert conventions["end_marker"] == END and conventions["message_separator"] == SEP
    card = (out / "README.md").read_text()
    assert "## How to call it" in card and SEP in card and END in card
    assert "| held-out perplexity of real user messages (lower = closer to real users) | 17.25 (95 % interval 14.10–20.50) |" in card
    assert "22.0; real users 18.2" in card and "esconv` (300 sessions, 4000 messages)" in card and '"beta": 1.0' in card

    # The same function as base + adapter, not the base model.
    ids = torch.tensor([[1, 5, 9, 42, 7, 2]])
    exported = logits(out, ids)
    assert torch.allclose(exported, logits(tiny_model_dir, ids, adapter_dir), atol=1e-5)
    assert not torch.allclose(exported, logits(tiny_model_dir, ids), atol=1e-3)

    # A server loads the folder as is and answers the flipped dialogue with the exported template.
    server = ServeProcess(out, tmp_path / "serve.log", "--model-name", "simulator")
    try:
        conversation = simulator_messages("profile: a tired nurse", [("assistant", "hi, how are you?")], SEP)
        reply = chat_completion(server.url, "simulator", conversation, api_key_env=None, timeout_s=60, max_retries=0,
                                temperature=0.0, max_tokens=5, what="exported simulator")
        assert reply.usage["completion_tokens"] >= 1
    finally:
        server.stop()


def test_export_refuses_a_missing_adapter_or_a_used_folder(tiny_model_dir, adapter_dir, tmp_path):
    with pytest.raises(DialError, match="no LoRA adapter"):
        export_simulator("it1", tmp_path / "a", tiny_model_dir, tmp_path / "nothing", {}, END, SEP)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(DialError, match="not empty"):
        export_simulator("sft", tmp_path / "used", tiny_model_dir, adapter_dir, {}, END, SEP)
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
