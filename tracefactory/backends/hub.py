"""Can a model be loaded? Checked before an engine starts, so that a model that is neither on disk nor
reachable ends in one clear line instead of an engine traceback after the hub client's retries."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from tracefactory.errors import BackendError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


@functools.cache  # a model found once is not probed again (the CLI checks before the engine does)
def ensure_model_available(model: str, field: str) -> None:
    """Pass when `model` is a local folder, is in the Hugging Face cache, or exists on the hub;
    otherwise raise a BackendError naming the model, why, and what to do (failures are not cached)."""
    if Path(model).is_dir():
        return
    if Path(model).exists() or model.startswith((".", "/")) or model.count("/") != 1:
        raise BackendError(
            f"{field} '{model}' is not a model folder (config.json, weights) nor a Hugging Face "
            "model id (ORG/NAME). Point it at a local model folder or a hub id."
        )
    if _cached(model):
        return
    how = (
        f"Download it where the hub is reachable (`hf download {model} --local-dir DIR`) and set {field} to "
        "DIR, or set HF_ENDPOINT to a mirror you can reach."
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise BackendError(f"{field} '{model}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {how}")
    import httpx

    url = f"{_endpoint()}/api/models/{model}"
    try:
        resp = httpx.get(url, timeout=PROBE_TIMEOUT_S, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise BackendError(
            f"{field} '{model}' is not on disk and the Hugging Face Hub cannot be reached "
            f"({_endpoint()}: {type(exc).__name__}). {how}"
        ) from None
    if resp.status_code in (401, 403, 404):
        raise BackendError(
            f"{field} '{model}': the hub at {_endpoint()} answered {resp.status_code} (no such model, "
            "or a gated one: log in with `hf auth login` or set HF_TOKEN). Check the model id."
        )
    log.debug("%s %s is on the hub (%s): the engine will download it", field, model, resp.status_code)


def load_tokenizer(model: str):
    """The PRM's tokenizer exactly as its `tokenizer.json` defines it. transformers' AutoTokenizer builds the class
    it maps the config's model type to (`qwen2` -> Qwen2Tokenizer, byte-level), which silently drops every space
    and newline of a vocabulary that has no byte-level tokens (the character-level PRM `train-prm` makes). A real
    Qwen2.5-Math-PRM's `tokenizer.json` is that byte-level pipeline itself (not checked here: no hub access)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(model)
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(model)
    return AutoTokenizer.from_pretrained(model)
