"""Build the vision-language model: the frozen EfficientNet-Lite0 and the frozen language
model joined by a linear projector (LLaVA-1 style) trained on scene captions.

Training, on the CPU in minutes:
1. features of ``n_train`` training scenes through the frozen encoder (once);
2. a warm start in closed form: ridge regression of each visual token's features onto the
   input embedding of the object word in its cell (zero for an empty cell), so the projector
   starts out writing "cat"-like vectors where the cat is;
3. ``steps`` of AdamW on the caption loss (next-token cross-entropy on the caption tokens,
   gradients through the frozen language model into the projector), with a progress bar.

The projector (and its training record) is cached in the user cache folder under a key of
every setting (``workbench.environment.cache_dir("vlm", key)``), written to a temporary file and
renamed; nothing is committed. ``load_vlm`` rebuilds it when absent. The build runs under
``workbench.artifacts.deterministic_build`` (deterministic kernels, one thread, seeded
generators), so the same seed gives the same weights on this machine; the sha256 of the
weights is written beside them (``projector.safetensors.sha256``), returned in the record
and compared with the published one (``docs/artifacts.json``)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench import artifacts
from workbench.cache import forward_embeds
from workbench.environment import cache_dir
from workbench.analyses.vision_heads.vlm.model import DEFAULT_PROMPT, VisionLanguageModel, left_pad
from workbench.analyses.vision_heads.vlm.objects import BY_NAME
from workbench.analyses.vision_heads.vlm.scenes import Scene, make_scenes, token_objects

FORMAT = 4  # 4: built deterministically (one thread), sha256 recorded; 3: mixed training layouts, 1024 scenes


@dataclass(frozen=True)
class ProjectorConfig:
    lm: str = "smollm2-135m"
    grid: int = 0  # 0: the encoder's last feature map (5x5 at 160 px)
    image_size: int = 160
    n_train: int = 1024
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    ridge: float = 1.0
    seed: int = 0
    prompt: str = DEFAULT_PROMPT

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "format": FORMAT}, sort_keys=True)
        return f"{self.lm}-g{self.grid}-s{self.steps}-n{self.n_train}-" + hashlib.sha1(blob.encode()).hexdigest()[:10]

    def artifact_key(self) -> str:
        """The projector's name in docs/artifacts.json and in provenance."""
        return f"vlm/{self.key()}"


def encode_scenes(vlm: VisionLanguageModel, scenes: Sequence[Scene], chunk: int = 32, progress: bool = False) -> torch.Tensor:
    """Frozen features of the scenes, ``[n grid*grid d_vision]``."""
    parts = []
    for start in tqdm(range(0, len(scenes), chunk), desc="encoding scenes", disable=not progress, leave=False):
        parts.append(vlm.encode([s.image for s in scenes[start:start + chunk]]))
    return torch.cat(parts)


def caption_losses(vlm: VisionLanguageModel, prompt: str, features: torch.Tensor | None, captions: Sequence[str],
                   grad: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over each caption's tokens, ``[n]``; ``features``
    None gives the image-free (text-only prompt) loss."""
    rows = vlm.rows(prompt, features, suffixes=list(captions), grad=grad)
    embeds, mask, pos = left_pad(rows)
    logits, _, _ = forward_embeds(vlm.lm, embeds, mask, position_ids=pos, grad=grad)
    length = embeds.shape[1]
    losses = []
    for i, cap in enumerate(captions):
        ids = vlm.text_ids(cap).to(logits.device)
        pred = logits[i, length - len(ids) - 1:length - 1]
        losses.append(nn.functional.cross_entropy(pred.float(), ids))
    return torch.stack(losses)


def _ridge_targets(vlm: VisionLanguageModel, scenes: Sequence[Scene]) -> torch.Tensor:
    """Per scene and visual token, the input embedding of the object word whose picture holds
    the token's centre (zero on the background)."""
    g = vlm.grid
    emb = vlm.lm.hf.get_input_embeddings().weight.detach()
    word = {name: emb[vlm.text_ids(" " + name)[0]] for name in BY_NAME}
    out = torch.zeros(len(scenes), g * g, emb.shape[1], device=emb.device)
    for i, s in enumerate(scenes):
        for tok, obj in enumerate(token_objects(s, g, vlm.image_size)):
            if obj is not None:
                out[i, tok] = word[obj]
    return out


def ridge_init(projector: nn.Linear, features: torch.Tensor, targets: torch.Tensor, ridge: float) -> None:
    """Closed-form least squares (with an L2 penalty) from features to target embeddings."""
    x = features.reshape(-1, features.shape[-1]).double()
    y = targets.reshape(-1, targets.shape[-1]).double()
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc
    lam = ridge * gram.diagonal().mean()
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), xc.T @ yc)
    with torch.no_grad():
        projector.weight.copy_(w.T.to(projector.weight.dtype))
        projector.bias.copy_((ym - xm @ w).to(projector.bias.dtype))


def train_projector(vlm: VisionLanguageModel, config: ProjectorConfig, progress: bool = True) -> dict[str, Any]:
    """Warm-start and train ``vlm.projector`` in place, deterministically; returns the training record."""
    with artifacts.deterministic_build(config.seed):
        return _train_projector(vlm, config, progress)


def _train_projector(vlm: VisionLanguageModel, config: ProjectorConfig, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    scenes = make_scenes(config.n_train, "train", seed=config.seed, size=config.image_size)
    features = encode_scenes(vlm, scenes, progress=progress)
    ridge_init(vlm.projector, features, _ridge_targets(vlm, scenes), config.ridge)
    captions = [s.caption for s in scenes]
    opt = torch.optim.AdamW(vlm.projector.parameters(), lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(config.seed)
    curve = []
    bar = tqdm(range(config.steps), desc="training projector", disable=not progress)
    for _ in bar:
        # cpu: a CPU generator draws on the CPU; a CPU index may index features on any device
        idx = torch.randperm(len(scenes), generator=gen)[: config.batch_size]
        loss = caption_losses(vlm, config.prompt, features[idx], [captions[int(i)] for i in idx], grad=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {"loss_curve": curve, "train_seconds": time.perf_counter() - start, "config": asdict(config),
            "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}


def _save_atomic(state: dict[str, torch.Tensor], record: dict[str, Any], folder) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=".projector-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file(state, tmp)
        rec_tmp = tmp + ".json"
        with open(rec_tmp, "w") as fh:
            json.dump(record, fh)
        os.replace(rec_tmp, folder / "record.json")
        artifacts.write_checksum(folder / "projector.safetensors", record["sha256"])
        os.replace(tmp, folder / "projector.safetensors")
    finally:
        for p in (tmp, tmp + ".json"):
            if os.path.exists(p):
                os.unlink(p)


def build_vlm(lm: Any = None, config: ProjectorConfig | None = None, progress: bool = True,
              rebuild: bool = False) -> tuple[VisionLanguageModel, dict[str, Any]]:
    """The vision-language model with its trained projector: from the cache, or trained now and
    cached. ``lm`` is a loaded workbench ``Model`` (loaded by name from the config when None)."""
    from safetensors.torch import load_file

    from workbench.models import load_model
    from workbench.vision.efficientnet import FEATURE_DIM, load_efficientnet_lite0

    config = config or ProjectorConfig()
    if lm is None:
        lm = load_model(config.lm)
    encoder = load_efficientnet_lite0()
    projector = nn.Linear(FEATURE_DIM, lm.shape.d_model).to(lm.dtype)
    vlm = VisionLanguageModel(lm, encoder, projector, grid=config.grid, image_size=config.image_size,
                              name=f"effnet-lite0+{lm.name}")
    folder = cache_dir("vlm", config.key())
    weights = folder / "projector.safetensors"
    if weights.is_file() and (folder / "record.json").is_file() and not rebuild:
        try:
            state = load_file(str(weights))
            projector.load_state_dict(state)
            record = json.loads((folder / "record.json").read_text())
            sha = artifacts.weights_sha256(state)
            if record.get("sha256", sha) != sha:
                raise ValueError("the cached weights are not the ones recorded")  # rebuilt below
            record.update(cached=str(weights), sha256=sha, artifact=config.artifact_key(),
                          build=artifacts.check_published(config.artifact_key(), sha))
            return vlm, record
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt
            pass
    record = train_projector(vlm, config, progress=progress)
    state = {k: v.detach().contiguous() for k, v in projector.state_dict().items()}
    record["sha256"] = artifacts.weights_sha256(state)
    _save_atomic(state, record, folder)
    record.update(cached=str(weights), artifact=config.artifact_key(),
                  build=artifacts.check_published(config.artifact_key(), record["sha256"]))
    projector.requires_grad_(False)
    return vlm, record
