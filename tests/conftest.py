"""Shared fixtures: the repo root, the ESConv folder, and a tiny offline chat model.

`tiny_model_dir` is a real (if useless) transformers checkpoint built in a couple of seconds with no
network: a 2-layer LlamaForCausalLM with random (seeded) weights and a byte-level BPE tokenizer
trained here on a few hundred sentences, with the ChatML special tokens and chat template. It
stands in for `models/base` wherever a test needs a tokenizer or a model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_VOCAB_SIZE = 1000
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 (as in SmolLM2)
TINY_MAX_POSITIONS = 16384  # RoPE: no learned positions, so a long window costs nothing


def pytest_addoption(parser):
    parser.addoption(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="force what `precision: auto` resolves to, in-process and in the end-to-end pipeline's params "
        "(auto: bf16 on CPUs with AMX / AVX512-BF16, else fp32). The suite must pass with each.",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: tests that take more than a few seconds (real model weights)")


def pytest_report_header(config):
    from dial.training.common import bf16_is_fast, training_device

    forced = config.getoption("--precision")
    device = training_device()
    natural = "bf16" if bf16_is_fast(device) else "fp32"
    return f"dial precision: {forced if forced != 'auto' else natural} (auto on this {device.type}: {natural}; --precision={forced})"


@pytest.fixture(scope="session")
def forced_precision(request) -> str:
    """`--precision`: auto, fp32 or bf16."""
    return request.config.getoption("--precision")


@pytest.fixture(autouse=True)
def _force_auto_precision(forced_precision, monkeypatch):
    """With `--precision fp32|bf16`, `auto` resolves to it in every test: the one place `auto`
    looks at the hardware (`bf16_is_fast`) answers as the forced precision would need. Tests that
    pass fp32/bf16 explicitly are unaffected."""
    if forced_precision != "auto":
        from dial.training import common

        monkeypatch.setattr(common, "bf16_is_fast", lambda device: forced_precision == "bf16")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def esconv_dir(repo_root) -> Path:
    path = (repo_root / ".." / "shared" / "datasets" / "esconv").resolve()
    if not path.is_dir():
        pytest.skip(f"ESConv dataset folder not found at {path} (expected ../shared/datasets/esconv beside the repo)")
    return path


def tiny_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Chat-like English sentences (with digits, punctuation and role words) to train the tiny BPE."""
    rng = random.Random(seed)
    subjects = ["I", "you", "we", "they", "my friend", "the assistant", "the user", "my sister", "our team", "she", "he"]
    verbs = ["feel", "think", "want", "need", "love", "hate", "remember", "forgot", "miss", "asked about", "talked about"]
    objects = ["the weather", "my job", "a long walk", "the exam", "coffee", "my family", "the weekend", "music",
               "this conversation", "the movie", "some help", "a break", "the news", "my dog", "the summary"]
    openers = ["hey", "hi there", "hello", "ok", "well", "honestly", "so", "hmm", "thanks", "sorry", "yes", "no"]
    closers = ["bye", "talk later", "thank you so much", "see you", "that helps", "not really", "I guess", "lol"]
    extras = ["system", "user", "assistant", "profile", "history", "session", "summary", "context", "message",
              "<|endconversation|>", "end of conversation", "What is going on?", "How are you today?"]
    words = (
        "about after again always am and anxious anyway appointment around ask bad because bed before believe "
        "better birthday book boss both bring brother busy call calm can car care cat change cheap child city "
        "class close cold come cook could course crazy cry daughter dear decide dinner doctor does done down "
        "dream drive early easy eat else email enough even evening every exactly family far fast father fine "
        "first food for found free from full fun game garden give glad good great group guess happy hard have "
        "head health hear help here holiday home hope hospital hour house how hungry idea important into job "
        "just keep kind know last late laugh learn leave left less letter life like listen little live lonely "
        "long look lost lot make many maybe mean meet mind minute moment money month morning mother move much "
        "name never new next nice night nothing now office often only open other out over paper party people "
        "phone picture place plan play please point pretty problem question quiet rain read ready really reason "
        "relationship rest right room run sad said same school second should sick since sleep small some soon "
        "sorry start stay still stop story stress student study sure talk teacher tell than that their then "
        "there thing think though time tired today together tomorrow tonight train travel true try turn under "
        "understand until upset very visit wait walk want watch water week welcome well what when where which "
        "while why will wish with without woman wonder word work world worried worry would write wrong year yesterday"
    ).split()
    sentences = [" ".join(rng.sample(words, rng.randint(4, 12))) for _ in range(n // 2)]
    for i in range(n):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        if rng.random() < 0.4:
            sentence = f"{rng.choice(openers)}, {sentence}"
        if rng.random() < 0.3:
            sentence += f" on day {rng.randint(1, 31)} at {rng.randint(0, 23)}:{rng.randint(0, 59):02d}"
        if rng.random() < 0.3:
            sentence += f". {rng.choice(closers)}"
        sentence += rng.choice([".", "!", "?", "...", ""])
        if i % 7 == 0:
            sentence += f" {rng.choice(extras)}"
        sentences.append(sentence[0].upper() + sentence[1:] if i % 2 else sentence)
    return sentences


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dial.models import CHATML_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=TINY_MAX_POSITIONS,
    )


def build_tiny_model_dir(
    out_dir: Path, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE, hidden_size: int = 32, num_hidden_layers: int = 2
) -> Path:
    """Write the tiny tokenizer + randomly initialised 2-layer Llama into `out_dir` (deterministic)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_builder():
    """`build_tiny_model_dir` itself, for tests that need a second tiny model of other sizes."""
    return build_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny, deterministic, offline chat checkpoint folder (model.safetensors + tokenizer + ChatML)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, loaded as the pipeline loads `models/base`."""
    from dial.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)
