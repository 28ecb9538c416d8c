"""Initial weights: files read safely (:mod:`.files`), the Hugging Face cache (:mod:`.hub`),
registered files (:mod:`.registry`), initialisations by name (:mod:`.inits`) and
``pretrain-load`` (:mod:`.pretrain`)."""

from __future__ import annotations

from .files import check_file, read_state_dict, read_weights, sha256_cached, sha256_file
from .hub import download_hub_weights, find_hub_weights, hub_cache_dir, hub_repo_id
from .inits import (
    DEFAULT_ARCH,
    STUDY_INITS,
    InitSpec,
    create_model_from_init,
    load_init_state,
    resolve_init,
    verify_sha256,
)
from .pretrain import pretrain_load
from .registry import PretrainLoadResult, register_checkpoint

__all__ = [
    "DEFAULT_ARCH", "InitSpec", "PretrainLoadResult", "STUDY_INITS", "check_file",
    "create_model_from_init", "download_hub_weights", "find_hub_weights", "hub_cache_dir",
    "hub_repo_id", "load_init_state", "pretrain_load", "read_state_dict", "read_weights",
    "register_checkpoint", "resolve_init", "sha256_cached", "sha256_file", "verify_sha256",
]
