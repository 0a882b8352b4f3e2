"""Two rollout shards on a local Ray cluster through prefect-ray, the teacher engine in a Ray actor:
the same dataset as the local task runner."""

import polars as pl
import pytest

from flows.build_dataset import run_build

pytestmark = pytest.mark.vllm
ray = pytest.importorskip("ray")
pytest.importorskip("prefect_ray")


def test_two_shards_on_ray_give_the_local_runners_dataset(prefect_harness, embedded_teacher, demo_subset, tmp_path):
    over = {
        "source.path": str(demo_subset),
        "source.limit": 24,
        "run.shard_size": 12,
        "sampling.n": 4,
        "step_score.enabled": False,
        "rewrite.enabled": False,
    }
    run_build(out=str(tmp_path / "local"), overrides=over, teacher=embedded_teacher)
    try:
        result = run_build(out=str(tmp_path / "ray"), overrides={**over, "run.task_runner": "ray"})
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert result["dataset_rows"] > 0
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(tmp_path / "local" / table).equals(pl.read_parquet(tmp_path / "ray" / table)), table
    commits = list((tmp_path / "ray" / "_work" / "generations").glob("chunk-*.parquet"))
    assert {p.name.split("-")[1] for p in commits} == {"00000", "00001"}  # both shards, written by the actor


def test_engine_actors_that_do_not_start_in_time_stop_the_run_with_a_clear_error():
    from tracefactory.config import TeacherConfig
    from tracefactory.distributed import RayTeacherPool
    from tracefactory.errors import BackendError

    cfg = TeacherConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m")  # nothing to load
    pool = RayTeacherPool(cfg, engines=1, start_timeout_s=0.001)  # no actor process starts that fast
    ray.init(include_dashboard=False, num_cpus=1, object_store_memory=80 << 20)
    try:
        with pytest.raises(BackendError, match="did not start within run.ray_start_timeout_s=0.001 s"):
            pool.start()
        assert pool.actors == []
    finally:
        ray.shutdown()
