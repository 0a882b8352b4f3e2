"""Teacher engines in Ray actors, for runs on a Ray cluster (`run.task_runner: ray`).

Each actor loads the teacher once and keeps it (one engine per actor — per GPU, or per
`tensor_parallel_size` GPUs); rollout shards are Prefect tasks on Ray workers that hand their shard
to an actor, round-robin, and the actor writes the shard's chunks into the run directory itself
(which multi-node runs must therefore keep on storage every node mounts). Step scoring and other
direct `generate` calls go to the actors too. Nothing here runs unless Ray is installed and chosen.
"""

from __future__ import annotations

import logging
from typing import Sequence

from tracefactory import pipeline
from tracefactory.backends.base import OnResult, Prompt, RendersPrompts, RequestResult, Teacher
from tracefactory.backends.factory import make_teacher
from tracefactory.config import FactoryConfig, SamplingConfig, TeacherConfig
from tracefactory.errors import BackendError
from tracefactory.store import io
from tracefactory.store.report import StageReport

log = logging.getLogger(__name__)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise BackendError(
            f"run.task_runner 'ray' needs Ray and prefect-ray ({exc}): pip install 'tracefactory[ray]'"
        ) from exc
    return ray


def ray_task_runner(cfg: FactoryConfig):
    """prefect-ray's task runner for `run.ray_address` (a fresh local instance when None)."""
    import_ray()
    from prefect_ray import RayTaskRunner

    # a local instance: no dashboard, a small object store (shards are small, engines live in actors)
    init = {} if cfg.run.ray_address else {"include_dashboard": False, "object_store_memory": 512 << 20}
    return RayTaskRunner(address=cfg.run.ray_address, init_kwargs=init)


class TeacherActor:
    """The body of one Ray actor: a teacher engine that lives as long as the actor."""

    def __init__(self, cfg: TeacherConfig):
        self.teacher = make_teacher(cfg)
        self.teacher.start()

    def name(self) -> str:
        return self.teacher.name

    def generate(self, prompts, n, params, seeds) -> list[RequestResult]:
        return self.teacher.generate(prompts, n, params, seeds)

    def rollout_shard(self, root: str, shard: int, problems, cfg: FactoryConfig, samples=None) -> StageReport:
        return pipeline.rollout_shard(io.RunDir(root), shard, problems, cfg, self.teacher, samples)

    def close(self) -> None:
        self.teacher.close()


class RayTeacherPool:
    """Engines (`pipeline.Engines`) that are `engines` Ray actors, started on first use, and a Teacher
    over them; picklable, so Prefect tasks on Ray workers can take it as an argument and reach the
    same long-lived actors."""

    def __init__(
        self,
        cfg: TeacherConfig,
        engines: int = 1,
        start_timeout_s: float = 1800.0,
        resources: dict[str, float] | None = None,
    ):
        from tracefactory.backends.vllm_teacher import teacher_name

        self.cfg = cfg
        self.engines = engines
        self.start_timeout_s = start_timeout_s
        self.resources = dict(resources or {})  # custom resources each actor asks for (`run.ray_actor_resources`)
        self.name = teacher_name(cfg) if cfg.kind == "vllm" else cfg.model
        self.actors: list = []
        self._identity: dict | None = None

    @property
    def teacher(self) -> Teacher:
        return self

    def identity(self) -> dict:
        """The actors' teachers' (built the same way, not started), fixed at its first use as theirs is."""
        if self._identity is None:
            self._identity = make_teacher(self.cfg).identity()
        return self._identity

    def rendered_prompt(self, prompt) -> str | None:
        """As the actors' teachers render it (their tokenizer, loaded here without an engine)."""
        teacher = make_teacher(self.cfg)
        return teacher.rendered_prompt(prompt) if isinstance(teacher, RendersPrompts) else None

    def start(self) -> None:
        """Start the engine actors (if not yet) and wait until every engine is loaded."""
        ray = import_ray()
        if not self.actors:
            gpus = ray.cluster_resources().get("GPU", 0)
            tp = self.cfg.tensor_parallel_size
            if gpus and gpus < self.engines * tp:
                raise BackendError(
                    f"run.ray_engines={self.engines} x teacher.tensor_parallel_size={tp} needs "
                    f"more GPUs than the Ray cluster's {gpus:g}"
                )
            opts: dict = {"num_gpus": tp} if gpus else {"num_cpus": 1}
            if self.resources:
                opts["resources"] = self.resources
            actor = ray.remote(TeacherActor).options(**opts)
            self.actors = [actor.remote(self.cfg) for _ in range(self.engines)]
            log.info("%d teacher engine(s) in Ray actors (%s each)", self.engines, opts)
        try:
            ray.get([a.name.remote() for a in self.actors], timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            for a in self.actors:  # stuck in their constructor: a close() call would queue behind it
                ray.kill(a)
            self.actors = []
            raise BackendError(
                f"the teacher engine actors did not start within run.ray_start_timeout_s={self.start_timeout_s:g} s "
                "(a model still downloading, no node with the resources they ask for, or a hung engine); "
                "see the Ray logs, or raise the timeout"
            ) from None

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int] | None = None,
        on_result: OnResult | None = None,
    ) -> list[RequestResult]:
        self.start()
        results = self._get(self.actors[0].generate.remote(list(prompts), n, params, seeds))
        for i, r in enumerate(results):
            if on_result:
                on_result(i, r)
        return results

    def rollout_shard(self, run: io.RunDir, shard: int, problems, cfg: FactoryConfig, samples=None) -> StageReport:
        if pipeline.shard_done(run, cfg, problems, self, samples):  # nothing to generate: read it here, no engine
            return pipeline.rollout_shard(run, shard, problems, cfg, self, samples)
        if not self.actors:
            raise BackendError("the engine actors must be started (start()) before shards are handed out")
        actor = self.actors[shard % len(self.actors)]
        return self._get(actor.rollout_shard.remote(str(run.root.resolve()), shard, problems, cfg, samples))

    def _get(self, ref):
        """`ray.get`, with an engine actor's death (its node lost, its process killed) as a clear error."""
        ray = import_ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BackendError(
                "a teacher engine actor died (its node was lost, or its process killed or out of memory). "
                "What it committed is kept: run the same command again once the cluster has a node for the engine, "
                f"and the run resumes from there. Ray said: {said}"
            ) from None

    def close(self) -> None:
        if not self.actors:
            return
        ray = import_ray()
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=120)
        except ray.exceptions.RayError as exc:  # a dead actor has nothing to close; the run's own error stays
            log.warning("teacher engine actors not closed cleanly: %s", str(exc).splitlines()[0] if str(exc) else exc)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
