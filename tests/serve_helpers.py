"""`python -m dial.simulation.serve` as a real subprocess, for the tests that talk to a served model
(the `openai` chatbot backend, the `openai` simulator backend)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request

import pytest


class ServeProcess:
    """`python -m dial.simulation.serve` on a free port; `.url` waits for its "serving ... on URL" line."""

    def __init__(self, model_dir, log_path, *args: str) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dial.simulation.serve", "--model-dir", str(model_dir), "--port", "0", "--threads", "1", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self._url = None

    @property
    def url(self) -> str:
        deadline = time.monotonic() + 180
        while self._url is None:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dial.simulation.serve did not start (exit {self.proc.poll()}):\n{self.log_path.read_text()}")
                continue
            if line.startswith("serving "):
                self._url = line.split(" on ", 1)[1].strip()
        return self._url

    def health(self) -> dict:
        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
