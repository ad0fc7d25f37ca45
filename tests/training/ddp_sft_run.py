"""Run by `accelerate launch` in test_sft.py: the SFT stage's own `run_sft` in each process.

    python ddp_sft_run.py SAMPLES MODEL_DIR OUT_ROOT PER_DEVICE_BATCH
"""

import sys
from pathlib import Path

import torch

from dial.params import SftParams
from dial.training.sft import run_sft

samples, model_dir, out, batch_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
params = SftParams(unit="session", max_sample_tokens=0, max_train_samples=2, batch_size=batch_size, epochs=1.0,
                   learning_rate=1e-3, logging_steps=1, save_steps=100, precision="fp32", seed=0)
run_sft(params, samples, model_dir, out / "model", out / "sft.json", out / "sft" / "loss.csv", out / "checkpoints", progress=False)
