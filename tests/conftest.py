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


def _every(tmp_path_factory, step: int, name: str):
    """Every `step`-th demo problem, as a JSONL file of its own."""
    from pathlib import Path

    lines = (Path(__file__).parents[1] / "data" / "demo" / "problems.jsonl").read_text().splitlines()
    path = tmp_path_factory.mktemp(name) / "subset.jsonl"
    path.write_text("\n".join(lines[::step]) + "\n")
    return path


@pytest.fixture(scope="session")
def demo_subset(tmp_path_factory):
    """Every 5th demo problem: 12 per level, 60 in all."""
    return _every(tmp_path_factory, 5, "demo")


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


@pytest.fixture(scope="session")
def r1_teacher():
    """One in-process vLLM engine of the R1-shaped draft teacher (data/teacher-r1): think blocks."""
    from tracefactory.backends.vllm_teacher import VLLMTeacher
    from tracefactory.config import REPO_ROOT, TeacherConfig

    teacher = VLLMTeacher(
        TeacherConfig(model=str(REPO_ROOT / "data" / "teacher-r1"), max_model_len=512), progress=False
    )
    yield teacher
    teacher.close()


R1_OVERRIDES = {"run.shard_size": 32}


@pytest.fixture(scope="session")
def r1_subset(tmp_path_factory):
    """Every 10th demo problem: 6 per level, 30 in all."""
    return _every(tmp_path_factory, 10, "demo-r1")


@pytest.fixture(scope="session")
def r1_run(prefect_harness, r1_teacher, r1_subset, tmp_path_factory):
    """configs/demo-r1.yaml (the demo recipe on the R1-shaped teacher) on `r1_subset`: (run dir, flow result)."""
    from flows.build_dataset import build_dataset
    from tracefactory.config import REPO_ROOT

    out = tmp_path_factory.mktemp("demo-r1-run") / "run"
    result = build_dataset(
        config=str(REPO_ROOT / "configs" / "demo-r1.yaml"),
        out=str(out),
        teacher=r1_teacher,
        overrides={"source.path": str(r1_subset), **R1_OVERRIDES},
    )
    return out, result
