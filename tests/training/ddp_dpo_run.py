"""Run by `accelerate launch` in test_dpo.py: the DPO stage's own `run_dpo` in each process.

    python ddp_dpo_run.py PAIRS MODEL_DIR PREVIOUS_ADAPTER OUT_ROOT PER_DEVICE_BATCH
"""

import sys
from pathlib import Path

import torch

from dial.params import DpoParams
from dial.training.dpo import run_dpo

pairs, model_dir, previous, out, batch_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
params = DpoParams(max_train_pairs=2, batch_size=batch_size, gradient_accumulation_steps=1, epochs=1, learning_rate=1e-2,
                   warmup_ratio=0.0, lr_scheduler="constant", logging_steps=1, save_steps=100, precision="fp32", seed=0)
run_dpo(params, pairs, model_dir, previous, out / "model", out / "dpo.json", out / "dpo" / "loss.csv", out / "checkpoints",
        progress=False)
