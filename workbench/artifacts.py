"""Trained artifacts (the VLM projector, the ICL regressors): built deterministically and
known by the sha256 of their weights.

Why: a README figure measured on a trained toy is only reproducible if the toy is. A build
runs inside ``deterministic_build`` (deterministic kernels, a fixed thread count, every
generator seeded; all restored afterwards), its weights are hashed by ``weights_sha256``
(names, dtypes, shapes and bytes, so the hash does not depend on the file format), the hash
is written beside the cached file and copied into the provenance of every Result that used
it. ``docs/artifacts.json`` holds the published checksum of each artifact a headline row
measured; ``check_published`` prints one line with both checksums when a build differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

BUILD_THREADS = 1  # one thread: the same reduction order on every machine, whatever its core count
PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "artifacts.json"
_warned: set[str] = set()


@contextmanager
def deterministic_build(seed: int, threads: int = BUILD_THREADS) -> Iterator[None]:
    """Deterministic kernels, ``threads`` intra-op threads and seeded torch / numpy / random
    generators for the block; the caller's settings are restored on the way out."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    was_cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        torch.set_num_threads(was_threads)
        if was_cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def checksum_path(weights: Path) -> Path:
    """Where a cached file's checksum lives: beside it, ``<file>.sha256``."""
    return weights.with_name(weights.name + ".sha256")


def write_checksum(weights: Path, sha: str) -> None:
    checksum_path(weights).write_text(sha + "\n")


def read_checksum(weights: Path) -> str | None:
    path = checksum_path(weights)
    return path.read_text().strip() if path.is_file() else None


def published(key: str, path: Path = PUBLISHED) -> dict | None:
    """The published record of artifact ``key`` (``"vlm/<config key>"``), None when unpublished
    (or when docs/ is not there, as in an installed wheel)."""
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("artifacts", {}).get(key)


def compare(key: str, sha: str, path: Path = PUBLISHED) -> str:
    """``published``, ``unpublished`` or ``differs``: this build against docs/artifacts.json."""
    rec = published(key, path)
    if rec is None:
        return "unpublished"
    return "published" if rec["sha256"] == sha else "differs"


def difference_line(key: str, sha: str, path: Path = PUBLISHED) -> str | None:
    """One line when this build's checksum is not the published one (None when it is, or none is published)."""
    rec = published(key, path)
    if rec is None or rec["sha256"] == sha:
        return None
    return (f"workbench: {key} built here has sha256 {sha[:16]}, the published build has {rec['sha256'][:16]} "
            f"({rec.get('machine', 'another machine')}); figures measured with it may differ from docs/headlines.json")


def check_published(key: str, sha: str, path: Path = PUBLISHED) -> str:
    """Say once per process, on stderr, when a build differs from the published one; returns ``compare``."""
    line = difference_line(key, sha, path)
    if line and key not in _warned:
        _warned.add(key)
        print(line, file=sys.stderr, flush=True)
    return compare(key, sha, path)


def provenance_entry(key: str, sha: str, path: Path = PUBLISHED) -> dict[str, str]:
    """What a Result's provenance records about an artifact it used."""
    rec = published(key, path)
    out = {"key": key, "sha256": sha, "build": compare(key, sha, path)}
    if rec is not None:
        out["published_sha256"] = rec["sha256"]
    return out
