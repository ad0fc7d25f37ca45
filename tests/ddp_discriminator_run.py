"""Run by `accelerate launch` in test_discriminator.py: `train_discriminator` in each process.

    python ddp_discriminator_run.py MODEL_DIR OUT PER_PROCESS_BATCH
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_discriminator import toy_corpus  # noqa: E402

from dial.discriminator import is_main_process, train_discriminator  # noqa: E402
from dial.params import DiscriminatorParams  # noqa: E402

model_dir, out, batch_size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
# fp32, as the SFT and DPO runs: the equality of 1 and 2 processes is exact maths only without bf16
# autocast, which rounds a batch of 2 padded sessions differently from two batches of 1 (precision
# auto picks bf16 on AVX512-BF16 / AMX machines).
params = DiscriminatorParams(n_layers=1, n_train=4, n_valid=1, seed=3, epochs=2, batch_size=batch_size, learning_rate=1e-3,
                             precision="fp32")
result = train_discriminator(params, *toy_corpus(5), model_dir, out / "model", progress=False)
if is_main_process():
    (out / "result.json").write_text(json.dumps({"losses": result.losses, "metrics": result.metrics, "processes": result.summary["processes"]}))
