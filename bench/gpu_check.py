"""Check the CUDA path on one GPU in <= 10 minutes (issue #13): the smoke pipeline
(`configs/smoke.yaml`) on CUDA in a scratch copy, stage by stage, printing per stage the wall
time, the throughput lines the stage logged (tokens/s) and the peak GPU memory (nvidia-smi,
polled). With vLLM installed, the simulator's messages come from `vllm serve` (simulator.backend
openai): the base model is served as `base`, each simulator's adapter is loaded by name
(`/v1/load_lora_adapter`) as soon as its stage has written it.

    bash bench/gpu_check.sh                 # = python bench/gpu_check.py
    python bench/gpu_check.py --no-vllm     # the local generation path on CUDA only

Exits 2 with a message when no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from dial.workspace import copy_project, repro_timed, stage_order, tool_env

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT = re.compile(r"[^\n]*(?:tokens/s|tok/s)[^\n]*")


class GpuMemoryPoller:
    """Peak `memory.used` (MiB) over all GPUs, polled every 0.5 s while a stage runs."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                output = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                        capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max([self.peak_mib, *(int(v) for v in output.split() if v.isdigit())])
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_vllm(root: Path, port: int) -> subprocess.Popen:
    env = dict(tool_env(root), VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    process = subprocess.Popen(
        ["vllm", "serve", "models/base", "--served-model-name", "base", "--enable-lora", "--max-lora-rank", "16",
         "--port", str(port), "--gpu-memory-utilization", "0.5"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "vllm.log", "w"),
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"vllm serve exited ({process.returncode}); see {root / 'vllm.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except OSError:
            time.sleep(2)
    process.terminate()
    raise SystemExit("vllm serve did not become healthy within 5 minutes")


def load_adapter(port: int, name: str, path: Path) -> None:
    body = json.dumps({"lora_name": name, "lora_path": str(path)}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/load_lora_adapter", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=120).read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-vllm", action="store_true", help="generate in the stages' own processes, on CUDA")
    parser.add_argument("--keep", type=Path, default=None, help="copy the scratch project's reports/ here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); nothing to check",
              file=sys.stderr)
        raise SystemExit(2)
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    use_vllm = not args.no_vllm and shutil.which("vllm") is not None
    override = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
    port = free_port()
    if use_vllm:
        override["simulator"] = {"backend": "openai", "server": {"base_url": f"http://127.0.0.1:{port}/v1"}}
    print(f"generation: {'vLLM (simulator.backend openai)' if use_vllm else 'local, in each stage (CUDA)'}")
    started = time.perf_counter()
    server = None
    with tempfile.TemporaryDirectory(prefix="dial-gpu-check-") as scratch:
        root = copy_project(REPO, Path(scratch), override)
        try:
            for stage in stage_order(root):
                if use_vllm and server is None and stage.startswith("simulate@"):
                    server = start_vllm(root, port)  # models/base exists by now
                with GpuMemoryPoller() as memory:
                    (result,) = repro_timed(root, [stage])
                if use_vllm and (stage == "sft" or stage.startswith("dpo@")):
                    name = "sft" if stage == "sft" else stage.split("@")[1]
                    load_adapter(port, name, root / "models" / "simulator" / name)
                rates = "; ".join(line.strip()[-90:] for line in THROUGHPUT.findall(result["output"])[-2:]) or "-"
                print(f"{stage:24s} {result['seconds']:6.1f} s  peak GPU {memory.peak_mib / 1024:5.1f} GiB  {rates}", flush=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait(60)
        if args.keep:
            shutil.copytree(root / "reports", args.keep, dirs_exist_ok=True)
    print(f"gpu_check: done in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
