"""Shared by the SFT and DPO tests: interrupting a Trainer mid-run, seeing where a run resumed, and
reading a saved adapter's weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback


class Interrupted(Exception):
    pass


class InterruptAt(TrainerCallback):
    """Raises at the end of `step`, as a killed process would stop (after the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"killed at step {self.step}")


class RecordStart(TrainerCallback):
    """Records the global step a run starts from: 0 when restarted, the checkpoint's when resumed."""

    start_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


def adapter_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "adapter_model.safetensors"))
