"""Training the attention regressors (Adam on the squared error of fresh prompts each
step, as in the authors' code) with KQ/OV checkpoints, cached on disk.

A trained model and its checkpoints live in
``workbench.environment.cache_dir("icl", <hash of the training spec>)/train.safetensors``, written to
a temporary file and renamed, so a half-written cache never exists; a cached spec is
never retrained. Training runs under ``workbench.artifacts.deterministic_build`` (deterministic
kernels, one thread, seeded generators); the sha256 of the trained weights is written beside
the file (``train.safetensors.sha256``) and carried in ``TrainRecord.sha256`` for provenance.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from workbench import artifacts
from workbench.environment import cache_dir

from workbench.analyses.icl.model import AttentionRegressor, build
from workbench.analyses.icl.task import covariance_matrix, embed, sample_prompts

CACHE_VERSION = 2  # 2: deterministic build with a checksum; bump when training code changes what a spec produces


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained model."""

    d: int
    n: int
    heads: int
    attention: str = "softmax"
    steps: int = 3000
    lr: float = 3e-3
    batch: int = 256
    noise_var: float = 0.1
    covariance: str = "isotropic"
    rho: float = 0.5
    seed: int = 0
    checkpoint_every: int = 100

    def key(self) -> str:
        doc = json.dumps({"v": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass
class TrainRecord:
    """A trained model and its history.

    checkpoint_steps: [S]; kq: [S head d+1 d+1]; ov: [S head d+1] (checkpoint 0 = init);
    loss: [steps] training loss per step.
    """

    spec: TrainSpec
    model: AttentionRegressor
    checkpoint_steps: torch.Tensor
    kq: torch.Tensor
    ov: torch.Tensor
    loss: torch.Tensor
    cached: bool = False
    sha256: str = ""  # of the trained weights (workbench.artifacts.weights_sha256)

    def artifact_key(self) -> str:
        return f"icl/{self.spec.key()}"


def cache_path(spec: TrainSpec) -> Path:
    return cache_dir("icl", spec.key()) / "train.safetensors"


def train(spec: TrainSpec, progress: bool = True, use_cache: bool = True) -> TrainRecord:
    """Train (or load from the cache) the model that ``spec`` describes."""
    path = cache_path(spec)
    if use_cache and path.is_file():
        try:
            return _load(spec, path)
        except Exception:  # a corrupt cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    # one thread: tiny matmuls run several times faster than on two on a busy machine, and alike everywhere
    with artifacts.deterministic_build(spec.seed, threads=1):
        record = _train(spec, progress)
    record.sha256 = artifacts.weights_sha256(record.model.state_dict())
    if use_cache:
        _save(record, path)
    return record


def _train(spec: TrainSpec, progress: bool) -> TrainRecord:
    torch.manual_seed(spec.seed)
    model = build(spec.d, spec.heads, attention=spec.attention, n_train=spec.n, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    cov = None if spec.covariance == "isotropic" else covariance_matrix(spec.d, spec.covariance, spec.rho)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    steps_at, kqs, ovs = [0], [model.kq()], [model.ov()]
    losses = torch.empty(spec.steps)  # cpu: a training record, filled with floats
    label = f"training {spec.attention} H={spec.heads}"
    bar = tqdm(range(1, spec.steps + 1), desc=label, disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        p = sample_prompts(spec.batch, spec.n, spec.d, spec.noise_var, cov, generator=gen)
        z, zq = embed(p)
        loss = ((model(z, zq) - p.yq) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step - 1] = loss.detach()
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            steps_at.append(step)
            kqs.append(model.kq())
            ovs.append(model.ov())
            if progress:
                bar.set_postfix(loss=f"{float(losses[max(0, step - spec.checkpoint_every):step].mean()):.3f}")
    model.eval()
    # cpu: a training record
    return TrainRecord(spec, model, torch.tensor(steps_at), torch.stack(kqs), torch.stack(ovs), losses)


def _save(record: TrainRecord, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach().contiguous() for k, v in record.model.state_dict().items()}
    tensors.update(checkpoint_steps=record.checkpoint_steps, kq=record.kq.contiguous(), ov=record.ov.contiguous(),
                   loss=record.loss)
    fd, tmp = tempfile.mkstemp(prefix=".train-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"spec": json.dumps(asdict(record.spec)), "sha256": record.sha256})
        artifacts.write_checksum(path, record.sha256)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(spec: TrainSpec, path: Path) -> TrainRecord:
    from safetensors.torch import load_file

    t = load_file(str(path))
    model = build(spec.d, spec.heads, attention=spec.attention, n_train=spec.n, seed=spec.seed)
    state = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    sha = artifacts.weights_sha256(state)
    recorded = artifacts.read_checksum(path)
    if recorded is not None and recorded != sha:
        raise ValueError(f"{path}: weights do not match their recorded sha256")  # rebuilt by the caller
    model.load_state_dict(state)
    model.eval()
    return TrainRecord(spec, model, t["checkpoint_steps"], t["kq"], t["ov"], t["loss"], cached=True, sha256=sha)
