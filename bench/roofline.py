"""What this machine can do, measured in the benchmark's own run, and what a forward pass costs.

Imported by the benchmarks next to it (`python bench/<name>.py` puts this folder on sys.path)."""

from __future__ import annotations

import time

import torch


def matmul_roofline(dtype: torch.dtype, size: int = 2048, repeats: int = 9) -> float:
    """FLOP/s of a size³ matrix product in `dtype` (median of `repeats`): what this machine
    sustains with torch in that precision. bf16 on AMX / AVX512-BF16 is several times fp32.
    These shared machines swing: one 2-core AMX host measured 760-880 GFLOP/s for minutes, then
    1800-2400, so the benchmarks measure it before and after their engines and use the higher."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / sorted(seconds)[repeats // 2]


def forward_flops_per_token(model, context: float, output_layer: bool = True) -> float:
    """Forward FLOPs of one token attending to `context` tokens: 2 × the weights of every matrix
    product (nn.Linear: projections, MLP, output layer or score head) + 2 × 2 × layers × width ×
    context for attention scores and their weighted sum. `output_layer=False` for prompt tokens
    whose logits are not computed (every engine here keeps only the last position's in prefill)."""
    config = model.config
    skip = model.get_output_embeddings() if not output_layer else None
    matmul_params = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not skip
    )
    width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    return 2 * matmul_params + 4 * config.num_hidden_layers * width * context


def precision_label(dtype: torch.dtype) -> str:
    return "bf16 (AMX / AVX512-BF16)" if dtype == torch.bfloat16 else "fp32 (no bf16 hardware)"
