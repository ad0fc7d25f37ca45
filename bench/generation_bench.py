"""Benchmark: our generation path against the engines a user would pick instead, on one workload.

Same model, prompts, batch and seeds for every engine, measured in one run (issue #12):

  hf-naive      transformers `model.generate`, one prompt at a time (what a first script does)
  hf-batched    transformers `model.generate` on the whole batch at once (left padding)
  llama.cpp     llama-cpp-python on the SAME GGUF file the base model comes from (Q4_1 weights,
                one prompt at a time: its Python API decodes one sequence per context), optional
  ours          `dial.simulation.generation.ChatGenerator`, the path simulate, pairs and evaluate-chatbot use

The workload is the simulate stage's first user turn: `--rows` held-out contexts of the default
data rendered as the simulator prompt (distinct prompts, so no engine gains from shared prefixes),
sampled with T 1.0 / top-p 0.95 and a fixed length: every engine must generate exactly
`--new-tokens` tokens per row (end-of-turn tokens are banned), so tokens/s compare like for like.

Each engine runs twice: with 1 new token (≈ prefill) and with `--new-tokens`; prefill tokens/s =
prompt tokens / t₁, decode tokens/s = rows × (N − 1) / (t_N − t₁). FLOP/s use 2 × (parameters of
the matrix products; the output layer only for decoded tokens) per token plus attention, against the roofline
measured in the same run: a large matmul in the precision `auto` picks (bf16 on AMX /
AVX512-BF16, else fp32).

    python bench/generation_bench.py                    # 36 rows x 48 tokens, ~4 minutes
    python bench/generation_bench.py --rows 36 --skip hf-naive

llama.cpp is not a dependency of DIAL. To include it (a generic build: the native one segfaults on
this GGUF on AMX machines):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \\
        pip install llama-cpp-python==0.3.36

Needs `models/base`, `data/scrubbed/`, `data/contexts/` and `data/splits/` (run `dvc repro
build_contexts` first). Run it alone: two torch processes on 2 cores slow each other down many times.
"""

from __future__ import annotations

import argparse
import time

import torch

from dial import io, paths
from dial.simulation.generation import ChatGenerator, load_chat_model, resolve_dtype
from dial.models import find_package_gguf
from dial.params import DecodingParams, load_params
from dial.prompting import simulator_messages
from dial.simulation.simulate import select_contexts
from roofline import forward_flops_per_token, matmul_roofline, precision_label

TEMPERATURE, TOP_P = 1.0, 0.95


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_hf(model, tokenizer, prompts: list[list[int]], seeds: list[int], new_tokens: int, batch: bool) -> float:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(
        do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=new_tokens, pad_token_id=pad,
    )

    def one_by_one():
        for prompt, seed in zip(prompts, seeds):
            torch.manual_seed(seed)
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
            assert out.shape[1] == len(prompt) + new_tokens

    def batched():
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        torch.manual_seed(seeds[0])
        out = model.generate(ids, attention_mask=mask, **kwargs)
        assert out.shape[1] == width + new_tokens

    with torch.inference_mode():
        return timed(batched if batch else one_by_one)


def run_ours(generator: ChatGenerator, conversations, seeds: list[int], new_tokens: int) -> float:
    decoding = DecodingParams(temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=new_tokens)
    generator.forget()

    def go():
        out = generator.generate(conversations, decoding, seeds)
        assert all(item.n_tokens == new_tokens for item in out)

    return timed(go)


def run_llama_cpp(llm, texts: list[str], seeds: list[int], new_tokens: int, banned: dict[int, float]) -> float:
    def go():
        for text, seed in zip(texts, seeds):
            llm.reset()  # no prompt cache carried from the previous row
            out = llm.create_completion(
                text, max_tokens=new_tokens, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, min_p=0.0,
                repeat_penalty=1.0, seed=seed, logit_bias=banned,
            )
            assert out["usage"]["completion_tokens"] == new_tokens, out["usage"]

    return timed(go)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=36, help="prompts = the batch (the simulate stage runs 36 sessions; the default data has 21 held-out contexts that qualify)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--skip", nargs="*", default=[], choices=["hf-naive", "hf-batched", "llama.cpp", "ours"])
    args = parser.parse_args()

    params = load_params()
    sessions = io.SESSIONS.read(paths.sessions_file(paths.SCRUBBED_DIR))
    messages = io.MESSAGES.read(paths.messages_file(paths.SCRUBBED_DIR))
    simulate = params.simulate.model_copy(update={"n_contexts": args.rows})
    selected = select_contexts(io.CONTEXTS.read(paths.CONTEXTS_FILE), sessions, messages, io.SPLITS.read(paths.SPLITS_FILE), simulate)
    conversations = [simulator_messages(text, [], params.sft_samples.message_separator) for text in selected["context_text"]]
    seeds = list(range(len(conversations)))

    device = torch.device("cpu")
    dtype = resolve_dtype(simulate.precision, device)
    model, tokenizer = load_chat_model(paths.BASE_MODEL_DIR, precision=simulate.precision)
    generator = ChatGenerator(model, tokenizer, batch_size=len(conversations))
    generator.end_token_ids = []  # fixed-length workload: no row may stop early
    prompts = generator.prompt_ids(conversations)
    texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
    model.generation_config.eos_token_id = None  # fixed length: no row stops early
    roofline = matmul_roofline(dtype)
    prompt_tokens = sum(len(p) for p in prompts)
    mean_prompt = prompt_tokens / len(prompts)
    prefill_flops = forward_flops_per_token(model, mean_prompt / 2, output_layer=False)
    decode_flops = forward_flops_per_token(model, mean_prompt + args.new_tokens / 2)
    print(
        f"{len(prompts)} rows, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens (mean {mean_prompt:.0f}), "
        f"{args.new_tokens} new tokens each; {precision_label(dtype)}, "
        f"{torch.get_num_threads()} threads; roofline (2048³ matmul, {dtype}) {roofline / 1e9:.0f} GFLOP/s; "
        f"{decode_flops / 1e9:.3f} GFLOP per decoded token"
    )

    engines = {}
    if "hf-naive" not in args.skip:
        engines["hf-naive"] = lambda n: run_hf(model, tokenizer, prompts, seeds, n, batch=False)
    if "hf-batched" not in args.skip:
        engines["hf-batched"] = lambda n: run_hf(model, tokenizer, prompts, seeds, n, batch=True)
    if "llama.cpp" not in args.skip:
        try:
            import llama_cpp
        except ImportError:
            print("llama.cpp: llama-cpp-python not installed (see this file's docstring); skipped")
        else:
            gguf = find_package_gguf(params.base_model.package, params.base_model.gguf_file)
            llm = llama_cpp.Llama(
                model_path=str(gguf), n_ctx=max(map(len, prompts)) + args.new_tokens + 64, n_threads=torch.get_num_threads(),
                n_batch=512, verbose=False,
            )
            banned = {llm.token_eos(): -float("inf")}
            for token in ("<|im_end|>", "<|endoftext|>"):
                ids = llm.tokenize(token.encode(), add_bos=False, special=True)
                if len(ids) == 1:
                    banned[ids[0]] = -float("inf")
            llama_prompt_tokens = sum(len(llm.tokenize(t.encode(), add_bos=False, special=True)) for t in texts)
            print(f"llama.cpp {llama_cpp.__version__}: {gguf.name}, its tokenizer reads the prompts as {llama_prompt_tokens} tokens (ours {prompt_tokens})")
            engines["llama.cpp"] = lambda n: run_llama_cpp(llm, texts, seeds, n, banned)
    if "ours" not in args.skip:
        engines["ours"] = lambda n: run_ours(generator, conversations, seeds, n)

    rows = []
    for name, run in engines.items():
        run(2)  # warm-up (allocator, thread pools, one-off initialisation)
        t_prefill = run(1)
        t_total = run(args.new_tokens)
        decode_seconds = max(t_total - t_prefill, 1e-9)
        prefill_rate = prompt_tokens / t_prefill
        decode_rate = len(prompts) * (args.new_tokens - 1) / decode_seconds
        overall = len(prompts) * args.new_tokens / t_total
        rows.append((name, t_total, overall, prefill_rate, decode_rate))
        print(f"  {name:10s} done in {t_total:6.1f} s", flush=True)

    print()
    roofline_after = matmul_roofline(dtype)
    print(f"roofline before the engines {roofline / 1e9:.0f}, after {roofline_after / 1e9:.0f} GFLOP/s: shares use the higher")
    roofline = max(roofline, roofline_after)
    print("| engine | total s | generated tok/s | prefill tok/s | prefill share of roofline | decode tok/s | decode share of roofline |")
    print("|---|---|---|---|---|---|---|")
    for name, total, overall, prefill_rate, decode_rate in rows:
        print(
            f"| {name} | {total:.1f} | {overall:.1f} | {prefill_rate:.0f} | {prefill_rate * prefill_flops / roofline:.1%} "
            f"| {decode_rate:.1f} | {decode_rate * decode_flops / roofline:.1%} |"
        )
    by_name = {name: overall for name, _, overall, _, _ in rows}
    if "ours" in by_name:
        for name, rate in by_name.items():
            if name != "ours":
                print(f"ours / {name}: {by_name['ours'] / rate:.2f}x generated tokens/s")
        fastest_peer = max((rate for name, rate in by_name.items() if name != "ours"), default=None)
        if "hf-naive" in by_name:
            ok = by_name["ours"] / by_name["hf-naive"] >= 10 or (fastest_peer and by_name["ours"] * 1.2 >= fastest_peer)
            print(f"target (>= 10x hf-naive, or within 1.2x of the fastest peer): {'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
