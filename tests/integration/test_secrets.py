"""No secret reaches a run directory or a log: a token planted in the environment and in the teacher's
URL is found in no file of the run and in nothing `tracefactory run` printed."""

import json
import os
import random
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tracefactory.backends.fake import solve

ENV_TOKEN = "envtoken-5f1e0c9a"
URL_TOKEN = "urltoken-a3b8d2e7"
FAIL = "Ben has"  # questions the server always fails: their errors (with the URL) are recorded


class _Teacher(BaseHTTPRequestHandler):
    """A loopback OpenAI-compatible server answering with the fake solver (this is a test of where
    URLs and keys go, not of a model)."""

    seen_auth: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Teacher.seen_auth.append(self.headers.get("Authorization", ""))
        question = body["messages"][-1]["content"]
        if question.startswith(FAIL):
            return self._send(500, {"error": "injected"})
        choices = [
            {
                "index": i,
                "message": {"content": solve(question, random.Random(body["seed"] + i), 0.1)},
                "finish_reason": "stop",
            }
            for i in range(body["n"])
        ]
        self._send(200, {"choices": choices, "usage": {"completion_tokens": 10 * body["n"]}})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_planted_tokens_appear_in_no_file_of_the_run_and_no_log(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lines = (Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl").read_text().splitlines()
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(lines[:40]) + "\n")
    base_url = f"http://tf-user:{URL_TOKEN}@127.0.0.1:{server.server_port}/v1"
    sets = {
        "teacher.kind": "openai",
        "teacher.model": "fake-served",
        "teacher.base_url": base_url,
        "teacher.retries": 1,
        "teacher.retry_backoff_s": 0.1,
        "teacher.return_token_ids": "false",
        "source.path": source,
        "sampling.n": 2,
        "sampling.budget.policy": "fixed",
        "step_score.enabled": "false",
        "rewrite.enabled": "false",
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OPENAI_API_KEY": ENV_TOKEN}
    out = tmp_path / "run"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tracefactory.cli", "run", "--out", str(out), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert _Teacher.seen_auth  # the server was used (with the URL's credentials: basic auth)
    assert list((out / "_work" / "generations").glob("chunk-*.parquet")), "no chunks written"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["teacher"]["base_url"].startswith("http://***@127.0.0.1")
    [rollout] = [r for r in manifest["funnel"] if r["stage"] == "rollout"]
    assert rollout["dropped_by_reason"].get("teacher_error"), rollout  # failures recorded, with their URL
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files)
    printed = done.stdout + done.stderr
    for token in (ENV_TOKEN, URL_TOKEN):
        leaks = [str(p) for p in files if token.encode() in p.read_bytes()]
        assert not leaks and token not in printed, (token, leaks)
