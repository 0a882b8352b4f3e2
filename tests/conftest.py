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
def plain_teacher():
    """One in-process vLLM engine of the plain embedded teacher (data/teacher-plain: no think block), shared by
    every test of the path a non-thinking teacher takes."""
    from tracefactory.backends.vllm_teacher import VLLMTeacher
    from tracefactory.config import PLAIN_TEACHER, TeacherConfig

    teacher = VLLMTeacher(TeacherConfig(model=str(PLAIN_TEACHER), max_model_len=512), progress=False)
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
def plain_run(prefect_harness, plain_teacher, demo_subset, tmp_path_factory):
    """configs/demo-plain.yaml's flow on `demo_subset` with the plain teacher under vLLM: (run dir, flow result).
    Shared: tests read it, and copy it before changing anything."""
    from flows.build_dataset import build_dataset
    from tracefactory.config import DEMO_PLAIN_CONFIG

    out = tmp_path_factory.mktemp("plain-run") / "run"
    result = build_dataset(
        config=str(DEMO_PLAIN_CONFIG),
        out=str(out),
        teacher=plain_teacher,
        overrides={"source.path": str(demo_subset), "run.shard_size": 32},
    )
    return out, result


@pytest.fixture(scope="session")
def embedded_teacher():
    """One in-process vLLM engine of the embedded (default, R1-shaped) teacher, data/teacher: think blocks."""
    from tracefactory.backends.vllm_teacher import VLLMTeacher
    from tracefactory.config import TeacherConfig

    teacher = VLLMTeacher(TeacherConfig(model="embedded", max_model_len=512), progress=False)
    yield teacher
    teacher.close()


R1_OVERRIDES = {"run.shard_size": 32}


@pytest.fixture(scope="session")
def r1_subset(tmp_path_factory):
    """Every 10th demo problem: 6 per level, 30 in all."""
    return _every(tmp_path_factory, 10, "demo-r1")


@pytest.fixture(scope="session")
def demo_run(prefect_harness, embedded_teacher, r1_subset, tmp_path_factory):
    """The demo config's flow (configs/demo.yaml: the embedded R1-shaped teacher) on `r1_subset`: (run dir, flow
    result). Shared: tests read it, and copy it before changing anything."""
    from flows.build_dataset import build_dataset

    out = tmp_path_factory.mktemp("demo-run") / "run"
    result = build_dataset(
        config=None, out=str(out), teacher=embedded_teacher, overrides={"source.path": str(r1_subset), **R1_OVERRIDES}
    )
    return out, result
