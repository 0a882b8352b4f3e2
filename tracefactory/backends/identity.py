"""A teacher's identity: what, besides the prompt and the sampling settings, decides its output.

Finished rollouts are keyed by it (`teacher_key`, in `stages.rollout.request_keys`): retrain the weights, point at
another hub revision, change the dtype or the context length, and the affected requests are generated
again instead of reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tracefactory.backends.base import Teacher
from tracefactory.config import FactoryConfig, TeacherConfig, digest
from tracefactory.redact import redact_url
from tracefactory.store.io import file_sha256

FULL_HASH_LIMIT = 200 << 20  # files up to this size are hashed whole; bigger ones by size, mtime, head, tail
_EDGE = 1 << 20
_FILES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest, once per process
# What a model folder holds for people, not for the engine: a model card, a licence, figures. Editing them changes
# no output, so they are not part of the identity (an edited card would otherwise regenerate every rollout).
_DOC_SUFFIXES = {".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf"}
_DOC_STEMS = {"LICENSE", "LICENCE", "NOTICE", "USE_POLICY"}


def is_documentation(path: Path) -> bool:
    return path.suffix.lower() in _DOC_SUFFIXES or path.name.split(".")[0].upper() in _DOC_STEMS


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILES:
        if st.st_size <= FULL_HASH_LIMIT:
            _FILES[key] = file_sha256(path)[:16]
        else:  # a multi-GB shard: size, mtime and both ends (hashing it whole on every run costs minutes)
            h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
            with open(path, "rb") as f:
                h.update(f.read(_EDGE))
                f.seek(st.st_size - _EDGE)
                h.update(f.read(_EDGE))
            _FILES[key] = h.hexdigest()[:16]
    return _FILES[key]


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A local model folder: a hash of its files (weights, config, tokenizer, chat template; not its card, licence
    or figures). A hub id: the revision asked for, or the commit of the snapshot in the local cache; else the id."""
    folder = Path(model)
    if folder.is_dir():
        h = hashlib.sha256()
        files = (q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".") and not is_documentation(q))
        for p in sorted(files):
            h.update(f"{p.relative_to(folder)}={file_fingerprint(p)}\n".encode())
        return "files:" + h.hexdigest()[:16]
    if revision:
        return f"revision:{revision}"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # no hub client, a malformed id: the id is all we know
        found = None
    if isinstance(found, str) and "snapshots" in Path(found).parts:
        parts = Path(found).parts
        return "snapshot:" + parts[parts.index("snapshots") + 1]
    return "hub-id:" + model


def vllm_identity(cfg: TeacherConfig) -> dict[str, Any]:
    """An in-process (or Ray-actor) vLLM engine: the weights and every engine setting that changes outputs."""
    return {
        "kind": "vllm",
        "weights": model_fingerprint(cfg.model_path, cfg.revision),
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_chunked_prefill": cfg.enable_chunked_prefill,
    }


def openai_identity(cfg: TeacherConfig) -> dict[str, Any]:
    """A served model: its name and the revision the config declares. The URL is left out on purpose:
    the same model behind another address (a new port, a load balancer) gives the same rollouts."""
    return {"kind": "openai", "model": cfg.model, "revision": cfg.revision}


def teacher_key(teacher: Teacher) -> str:
    return digest(teacher.identity())


def teacher_identity(cfg: FactoryConfig, teacher: Teacher) -> dict[str, Any]:
    """The manifest's record of the teacher: what each request's key holds of it, and the files it was made of."""
    info: dict[str, Any] = {"name": teacher.name, "kind": cfg.teacher.kind, "model": cfg.teacher.model_path}
    info["identity"] = teacher.identity()  # what each request's key holds of the teacher
    info["key"] = teacher_key(teacher)
    if cfg.teacher.base_url:
        info["base_url"] = redact_url(cfg.teacher.base_url)
    model_dir = Path(cfg.teacher.model_path)
    if model_dir.is_dir():  # the same (cached) file hashes the teacher's identity is made of
        info["files"] = {p.name: file_fingerprint(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
    return info
