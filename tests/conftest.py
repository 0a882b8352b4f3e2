import logging
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny teacher needs far less than the default
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
logging.getLogger("httpx").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def embedded_teacher():
    """One in-process vLLM engine of the embedded teacher, shared by every test that needs it."""
    from tracefactory.backends.vllm_teacher import VLLMTeacher
    from tracefactory.config import TeacherConfig

    teacher = VLLMTeacher(TeacherConfig(model="embedded", max_model_len=512), progress=False)
    yield teacher
    teacher.close()


@pytest.fixture(scope="session")
def demo_subset(tmp_path_factory):
    """Every 5th demo problem: 12 per level, 60 in all."""
    from pathlib import Path

    lines = (Path(__file__).parents[1] / "data" / "demo" / "problems.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp("demo") / "subset.jsonl"
    path.write_text("\n".join(lines[::5]) + "\n")
    return path


@pytest.fixture(scope="session")
def demo_run(prefect_harness, embedded_teacher, demo_subset, tmp_path_factory):
    """The demo config's flow on `demo_subset` with the embedded teacher under vLLM: (run dir, flow result).
    Shared: tests read it, and copy it before changing anything."""
    from flows.build_dataset import build_dataset

    out = tmp_path_factory.mktemp("demo-run") / "run"
    result = build_dataset(
        config=None,
        out=str(out),
        teacher=embedded_teacher,
        overrides={"source.path": str(demo_subset), "run.shard_size": 32},
    )
    return out, result
