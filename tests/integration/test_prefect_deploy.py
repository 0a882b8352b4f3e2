"""The deployments in prefect.yaml, for real: a `prefect server` on loopback, a process work pool and
worker, `prefect deploy --all` from the repository, then a run of `build_dataset/demo` triggered through the
API, executed by the worker (embedded teacher under vLLM, a small config), completing with the dataset the
same config gives; the schedules are registered as prefect.yaml declares them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.server]
REPO = Path(__file__).parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd, env, log: Path, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _api(client: httpx.Client, method: str, url: str, **kw) -> dict:
    """A Prefect API call; a 503 (the SQLite-backed server busy while a worker and a deploy hit it on 2 cores)
    is retried, as Prefect's own client does."""
    for _ in range(20):
        response = client.request(method, url, **kw)
        if response.status_code != 503:
            return response.raise_for_status().json()
        time.sleep(2)
    return response.raise_for_status().json()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_deployed_flow_runs_on_a_process_worker_and_its_schedule_is_registered(demo_subset, tmp_path):
    port = _port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", None)
    server = _start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "server.log"
    )
    worker = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("prefect server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])

        def cli(*args):
            done = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True)
            assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
            return done.stdout

        cli("work-pool", "create", "tracefactory", "--type", "process")
        cli("deploy", "--all")
        worker = _start(
            [PREFECT, "worker", "start", "--pool", "tracefactory", "--limit", "1"], env, tmp_path / "worker.log"
        )

        client = httpx.Client(base_url=api, timeout=30)
        deployments = {f"{d['name']}": d for d in _api(client, "POST", "/deployments/filter", json={})}
        assert set(deployments) == {"demo", "nightly-release", "release"}
        (demo_schedule,) = deployments["demo"]["schedules"]
        assert demo_schedule["schedule"]["cron"] == "0 3 * * *" and demo_schedule["active"]
        (nightly,) = deployments["nightly-release"]["schedules"]
        assert nightly["schedule"]["cron"] == "0 4 * * *" and not nightly["active"]  # off until repo_id is set

        out = tmp_path / "run"
        small = {
            "source.path": str(demo_subset),
            "source.limit": 20,
            "sampling.n": 2,
            "sampling.budget.policy": "fixed",
            "rewrite.enabled": False,
            "step_score.enabled": False,
        }
        run = _api(
            client,
            "POST",
            f"/deployments/{deployments['demo']['id']}/create_flow_run",
            json={"parameters": {"out": str(out), "overrides": small}},
        )
        deadline = time.time() + 540
        state = None
        while time.time() < deadline:
            state = _api(client, "GET", f"/flow_runs/{run['id']}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(3)
        logs = (tmp_path / "worker.log").read_text()[-4000:]
        assert state and state["type"] == "COMPLETED", (state, logs)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["config"]["sampling"]["n"] == 2
        problems = pl.read_parquet(out / "problems")
        assert len(problems) == 20 and (problems["n_rollouts"] == 2).all()
        dataset = pl.read_parquet(out / "dataset")
        assert len(dataset) > 0 and dataset["curriculum_rank"].to_list() == list(range(len(dataset)))
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
