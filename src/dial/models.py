"""The simulator's base checkpoint: materialised once as a plain transformers folder (`models/base`).

Two sources (`params.base_model.source`):

* `gguf_package` (default, offline): a GGUF file shipped inside an installed Python package
  (SmolLM2-135M-Instruct, Q4_1). transformers dequantises it on load; a GGUF-loaded model cannot be
  `save_pretrained` (it carries the GGUF quantizer), so its weights are copied into a fresh model of
  the same architecture (float32) and that is saved.
* `pretrained`: a local checkpoint directory or a Hugging Face hub id, loaded and re-saved as is.

The output folder always holds `model.safetensors`, `config.json`, `generation_config.json`, the
tokenizer files with a chat template, and `dial-base-model.json` (where it came from, parameter
count, dtype, sha256 of the weights). It is written into a temporary folder beside the target and
renamed into place, so an interrupted stage never leaves a half-written model, and the same inputs
give byte-identical files (DVC caches on them).

The rest of the pipeline only needs `load_tokenizer` and `count_tokens`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from dial.errors import DialError
from dial.io import atomic_output_dir
from dial.params import BaseModelParams

log = logging.getLogger(__name__)

MANIFEST = "dial-base-model.json"
WEIGHTS = "model.safetensors"

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# ChatML without a default system prompt (used when a checkpoint ships no template of its own).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tokenizer lengths above this are transformers' "no limit" sentinel (1e30).
_NO_LIMIT = 10**9
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def materialise_base_model(params: BaseModelParams, out_dir: Path) -> Path:
    """Write the base checkpoint described by `params` into `out_dir` (atomically; replaces it)."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    if params.source == "gguf_package":
        gguf_path = find_package_gguf(params.package, params.gguf_file)
        log.info("base model: GGUF %s (package %s)", gguf_path, params.package)
        model, tokenizer = _load_gguf(gguf_path)
        origin: dict[str, Any] = {
            "source": "gguf_package",
            "package": params.package,
            "gguf_file": params.gguf_file,
            "gguf_sha256": sha256_file(gguf_path),
        }
    else:
        log.info("base model: pretrained %s", params.name_or_path)
        model, tokenizer = _load_pretrained(params.name_or_path)
        origin = {"source": "pretrained", "name_or_path": params.name_or_path}

    prepare_tokenizer(tokenizer, model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out_dir) as staging:
        log.info("saving model and tokenizer into %s", staging)
        model.save_pretrained(staging, max_shard_size="1000GB")
        tokenizer.save_pretrained(staging)
        weights = staging / WEIGHTS
        if not weights.is_file():
            raise DialError(f"saving the base model did not produce {WEIGHTS} (got: {sorted(os.listdir(staging))})")
        _check_saved_tokenizer(staging)
        manifest = {
            **origin,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "parameters": count_parameters(model),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "vocab_size": len(tokenizer),
            "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
            "special_tokens": {
                "bos": tokenizer.bos_token,
                "eos": tokenizer.eos_token,
                "pad": tokenizer.pad_token,
                "unk": tokenizer.unk_token,
            },
            "model_sha256": sha256_file(weights),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info(
        "base model ready in %s: %s, %s parameters, %s, %.1f MB, %.1f s",
        out_dir,
        manifest["architecture"],
        f"{manifest['parameters']:,}",
        manifest["dtype"],
        (out_dir / WEIGHTS).stat().st_size / 1e6,
        time.perf_counter() - started,
    )
    return out_dir


def load_tokenizer(model_dir: Path):
    """The simulator's tokenizer (with its chat template) from a materialised model folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DialError(
            f"{model_dir}: base model folder not found; build it first with `dvc repro base_model` "
            "(or `python stages/base_model.py`)"
        )
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise DialError(f"{model_dir}: no tokenizer files (tokenizer.json / tokenizer_config.json) in the base model folder")
    try:
        if (model_dir / "tokenizer.json").is_file():
            # A fast tokenizer loads directly; AutoTokenizer would first import the model's config
            # classes (seconds of imports at every stage start).
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise DialError(f"{model_dir}: cannot load the tokenizer: {_first_line(exc)}") from exc
    if tokenizer.chat_template is None:
        log.warning("%s: the tokenizer has no chat template", model_dir)
    return tokenizer


def count_tokens(tokenizer, texts: list[str], batch_size: int = 512) -> list[int]:
    """Token count of each text, as the model sees it inside a prompt (no special tokens added)."""
    texts = list(texts)
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return counts


def find_package_gguf(package: str, gguf_file: str) -> Path:
    """The GGUF file `gguf_file` inside installed package `package` (the package is not imported)."""
    if Path(gguf_file).is_absolute() or ".." in Path(gguf_file).parts:
        raise DialError(f"base_model.gguf_file: {gguf_file!r} must be a file name inside package {package!r}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        spec = None
        log.debug("find_spec(%s) failed: %s", package, exc)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    if not locations:
        raise DialError(
            f"base_model.package: Python package {package!r} is not installed "
            "(install it into this environment, or set base_model.source: pretrained)"
        )
    for location in locations:
        candidate = Path(location) / gguf_file
        if candidate.is_file():
            return candidate
    nested = sorted(path for location in locations for path in Path(location).rglob(gguf_file) if path.is_file())
    if nested:
        return nested[0]
    found = sorted({path.name for location in locations for path in Path(location).rglob("*.gguf")})
    raise DialError(
        f"base_model.gguf_file: {gguf_file!r} not found in package {package!r} ({', '.join(locations)}); "
        f"GGUF files there: {', '.join(found) if found else 'none'}"
    )


def prepare_tokenizer(tokenizer, model=None) -> None:
    """Make the tokenizer usable for chat SFT: a chat template, eos, a pad token, a real max length.

    Pad is `<|endoftext|>` when the vocabulary has it and it differs from eos: with pad == eos
    (SmolLM2's own choice) a collator that masks padding by token id would also drop the end-of-turn
    token from the loss and the simulator would never learn to stop.
    """
    vocab = tokenizer.get_vocab()
    if tokenizer.chat_template is None:
        if IM_START in vocab and IM_END in vocab:
            log.info("the checkpoint has no chat template; using ChatML")
            tokenizer.chat_template = CHATML_TEMPLATE
        else:
            raise DialError(
                "the base model's tokenizer has no chat template and no ChatML tokens "
                f"({IM_START}, {IM_END}); use an instruct/chat checkpoint"
            )
    if tokenizer.eos_token is None and IM_END in vocab:
        tokenizer.eos_token = IM_END
    if tokenizer.eos_token is None:
        raise DialError("the base model's tokenizer has no eos token")
    if IM_END in str(tokenizer.chat_template) and tokenizer.eos_token != IM_END:
        log.warning("chat template ends turns with %s but eos is %s", IM_END, tokenizer.eos_token)
    if END_OF_TEXT in vocab and tokenizer.eos_token != END_OF_TEXT:
        tokenizer.pad_token = END_OF_TEXT
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is
        tokenizer.init_kwargs.pop(key, None)
    if model is not None:
        window = getattr(model.config, "max_position_embeddings", None)
        if window and (tokenizer.model_max_length is None or tokenizer.model_max_length > _NO_LIMIT):
            tokenizer.model_max_length = int(window)
        pad_id = tokenizer.pad_token_id
        model.config.pad_token_id = pad_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = pad_id
            if model.generation_config.eos_token_id is None:
                model.generation_config.eos_token_id = tokenizer.eos_token_id


def count_parameters(model) -> int:
    """Distinct parameters (tied input/output embeddings counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_gguf(gguf_path: Path):
    """GGUF → (plain float32 model that can be saved, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    started = time.perf_counter()
    try:
        with gguf_read_once():
            log.info("reading the GGUF metadata and tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            log.info("dequantising the GGUF weights (tokenizer took %.1f s)", time.perf_counter() - started)
            gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise DialError(f"{gguf_path}: transformers cannot load this GGUF file: {_first_line(exc)}") from exc
    log.info("GGUF loaded in %.1f s; copying into a plain %s", time.perf_counter() - started, type(gguf_model).__name__)
    model = plain_copy(gguf_model, torch.float32)
    del gguf_model
    return model, tokenizer


@contextlib.contextmanager
def gguf_read_once() -> Iterator[None]:
    """Parse each GGUF file once while loading it (a pure speed-up: SmolLM2 loads in ~18 s, not ~36 s).

    transformers re-reads the GGUF metadata for the config, the tokenizer and the weights
    (`gguf.GGUFReader` walks ~100k vocabulary fields in Python each time, ~7 s) and rebuilds
    `gguf.get_tensor_name_map` once per submodule. Within this block both are memoised; outside it
    the `gguf` module is untouched. If a future transformers stops using these names, this does nothing.
    """
    import gguf

    original_reader = getattr(gguf, "GGUFReader", None)
    original_name_map = getattr(gguf, "get_tensor_name_map", None)
    if original_reader is None or original_name_map is None:
        yield
        return
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if mode != "r":
            return original_reader(path, mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader = original_reader
        gguf.get_tensor_name_map = original_name_map
        readers.clear()


def plain_copy(model, dtype):
    """A fresh model of the same class with `model`'s weights, minus any quantisation metadata."""
    import torch

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    state = model.state_dict()
    torch.manual_seed(0)
    with _default_dtype(dtype), _skip_weight_init():
        fresh = type(model)(config)  # every weight is overwritten below (checked), so no random init
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])  # e.g. lm_head.weight (shares the embedding)
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise DialError(
            f"copying the loaded weights into a plain {type(model).__name__} failed: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    return fresh


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else must be a local directory."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _load_pretrained(name_or_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise DialError(f"base_model.name_or_path: {name_or_path!r} is a file, not a checkpoint directory")
        if not (local / "config.json").is_file():
            raise DialError(f"base_model.name_or_path: {local} has no config.json (not a transformers checkpoint)")
        where, target = f"local checkpoint {local}", str(local)
    elif _looks_like_path(name_or_path):
        raise DialError(f"base_model.name_or_path: local checkpoint directory {name_or_path!r} not found ({local.resolve()})")
    else:
        where, target = f"hub model {name_or_path!r}", name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
    except Exception as exc:  # hub/network/format errors come in many types; report one line
        if local.exists():
            raise DialError(f"base_model.name_or_path: cannot load {where}: {_first_line(exc)}") from exc
        raise DialError(
            f"base_model.name_or_path: {name_or_path!r} is not a local directory and could not be loaded from the "
            f"Hugging Face hub (offline, unknown id or no access?): {_first_line(exc)} "
            "(offline: set HF_HUB_OFFLINE=1 to fail fast, or point it at a local checkpoint directory)"
        ) from exc
    if getattr(model, "hf_quantizer", None) is not None:
        model = plain_copy(model, next(model.parameters()).dtype)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Saving helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_peft_deprecation() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps or
    trains a model: a FutureWarning that is noise, not our call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _check_saved_tokenizer(model_dir: Path) -> None:
    """Reload the saved tokenizer and render a chat, so a broken template fails the stage, not training."""
    tokenizer = load_tokenizer(model_dir)
    if tokenizer.chat_template is None:
        raise DialError(f"{model_dir}: the saved tokenizer lost its chat template")
    probe = [{"role": "system", "content": "probe-system"}, {"role": "user", "content": "probe-user"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja errors
        raise DialError(f"{model_dir}: the chat template does not render: {_first_line(exc)}") from exc
    if "probe-system" not in text or "probe-user" not in text:
        raise DialError(f"{model_dir}: the chat template drops message content: {text!r}")


@contextlib.contextmanager
def _default_dtype(dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _skip_weight_init():
    """transformers' `no_init_weights` (saves ~4 s of random init we would overwrite), if available."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
