"""VHD / VHR on a Hugging Face vision-language model in a local folder: LLaVA
(``LlavaForConditionalGeneration``, ``--llava``) or SmolVLM / Idefics3
(``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``, ``--vlm``).

The adapter gives the analysis what it uses from the workbench's own ``VisionLanguageModel``:
``lm`` (a workbench ``Model`` over the language half, a Llama-family decoder, with the
canonical hook points, so ``blocks.{l}.attn.hook_z`` is read and patched through the caching
layer), ``token_embeds(ids)`` and ``paired_batch(prompt, images)``: the prompt as the
checkpoint's own processor expands it (LLaVA: one ``<image>`` per visual token; Idefics3:
``<fake_token_around_image><global-img><image>...<fake_token_around_image>``), with the vision
tower's projected features written at the image-token positions (what the model's own forward
does), and beside it the same prompt with the image placeholder removed.

Tested on tiny random models of both built offline from their configurations
(``workbench.analyses.vision_heads.vlm.tiny``); no released checkpoint is reachable here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import InputError
from workbench.analyses.vision_heads.vlm.model import IMAGE_TOKEN, PairedBatch, left_pad, split_prompt

# kind -> (flag, the model types it accepts, what the user should give)
KINDS = {
    "llava": ("--llava", ("llava",), "a Hugging Face LLaVA folder (LlavaForConditionalGeneration: config.json, weights, processor)"),
    "smolvlm": ("--vlm", ("idefics3", "smolvlm"),
                "a Hugging Face SmolVLM / Idefics3 folder (config.json, weights, processor)"),
}


class CausalView(nn.Module):
    """A causal-LM-shaped view of a VLM's language half (``.model`` = the decoder stack,
    ``lm_head``), so the workbench hook points install as on any Llama."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.model, self.lm_head, self.config = decoder, lm_head, decoder.config

    def get_input_embeddings(self) -> nn.Module:
        embed = self.model.embed_tokens
        if not isinstance(embed, nn.Module):
            raise TypeError(f"the decoder's embed_tokens is a {type(embed).__name__}, not a module")
        return embed

    def forward(self, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=False, input_ids=None, **kwargs):
        import inspect

        from transformers.modeling_outputs import CausalLMOutputWithPast

        past = cache if cache is not None else past_key_values
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=use_cache, **{key: past})
        new_past = getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)
        result = CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state))
        setattr(result, "cache" if hasattr(result, "cache") else "past_key_values", new_past)
        return result


def check_folder(folder: str | Path, kind: str) -> str:
    """The folder's ``model_type`` when it is a local checkpoint of ``kind``; one-line
    ``InputError`` naming the flag and the fix otherwise (missing folder, no config, wrong model)."""
    flag, types, what = KINDS[kind]
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        raise InputError(f"{flag} '{folder}': no such folder; give {what}")
    config = path / "config.json"
    if not config.is_file():
        raise InputError(f"{flag} '{folder}' has no config.json; give {what}")
    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError) as exc:
        raise InputError(f"{flag} '{folder}': config.json is not readable JSON ({type(exc).__name__}); give {what}") from None
    if model_type not in types:
        other = next((k for k, (_, t, _) in KINDS.items() if model_type in t), None)
        hint = f"; for a {other} model use {KINDS[other][0]}" if other else ""
        raise InputError(f"{flag} '{folder}' holds a '{model_type or 'unknown'}' model, not {' / '.join(types)}{hint}")
    return model_type


def _features(out: Any) -> torch.Tensor:
    """``get_image_features``'s answer (transformers 5: an output whose ``pooler_output`` is one
    tensor per image; older: a tensor or a list) -> ``[tokens d_model]`` for one image."""
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    return feats.reshape(-1, feats.shape[-1])


def _model_class(model_type: str) -> Any:
    """The transformers class of a checkpoint's ``model_type`` (typed Any: transformers types
    ``from_pretrained`` through a decorator that loses the class it is called on)."""
    if model_type == "llava":
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration
    if model_type == "idefics3":
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration
    from transformers import SmolVLMForConditionalGeneration

    return SmolVLMForConditionalGeneration


class HFVisionAdapter:
    """A local Hugging Face VLM (``kind`` ``llava`` or ``smolvlm``) behind the interface the
    vision-head analysis uses."""

    def __init__(self, folder: str, kind: str = "llava", dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        from transformers import AutoProcessor

        from workbench.hooks import install_hook_points
        from workbench.models import Model, shape_of

        if kind not in KINDS:
            raise InputError(f"unknown vision-language model kind '{kind}'; choose one of {', '.join(KINDS)}")
        model_type = check_folder(folder, kind)
        flag, _, what = KINDS[kind]
        try:
            self.full = _model_class(model_type).from_pretrained(str(folder), dtype=dtype).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{flag} '{folder}': cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                             f"give {what}") from None
        self.kind, self.model_type, self.folder = kind, model_type, str(folder)
        for p in self.full.parameters():
            p.requires_grad_(False)
        inner = self.full.model
        decoder = inner.language_model if model_type == "llava" else inner.text_model
        view = CausalView(decoder, self.full.lm_head)
        arch, points = install_hook_points(view)
        tok = self.processor.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.image_token_id = int(self.full.config.image_token_id)
        self.lm = Model(name=f"{kind}:{Path(str(folder)).name}", hf=view, tokenizer=tok, shape=shape_of(view), arch=arch,
                        source=f"{model_type} language model from {folder}", hook_points=points)
        self.name = self.lm.name

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.hf.get_input_embeddings()(ids.to(self.lm.device))

    def encode(self, images: Any) -> list:
        """Images as PIL pictures for the processor (the processor does the resizing)."""
        from PIL import Image

        from workbench.vision.images import to_rgb_float

        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            images = [images]
        arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        if not arrays:
            raise InputError("no images given; give at least one image [height width 3]")
        out = []
        for i, a in enumerate(arrays):
            if isinstance(a, Image.Image):
                out.append(a.convert("RGB"))
                continue
            rgb = to_rgb_float(np.asarray(a), source=f"image {i}")
            out.append(Image.fromarray((rgb * 255).round().astype(np.uint8)))
        return out

    def image_features(self, enc: dict) -> torch.Tensor:
        """The projected visual tokens of one processed image, ``[tokens d_model]``."""
        kw = {"pixel_values": enc["pixel_values"].to(self.lm.device, self.lm.dtype)}
        if "pixel_attention_mask" in enc:
            kw["pixel_attention_mask"] = enc["pixel_attention_mask"].to(self.lm.device)
        if "image_sizes" in enc:
            kw["image_sizes"] = enc["image_sizes"]
        with torch.no_grad():
            return _features(self.full.get_image_features(**kw))

    def text_only_ids(self, prompt: str) -> torch.Tensor:
        """The prompt's ids with the image placeholder removed (the image-free branch)."""
        # cpu: token ids from the tokenizer; callers move them
        return torch.tensor(self.lm.tokenizer.encode(prompt.replace(IMAGE_TOKEN, ""), add_special_tokens=True),
                            dtype=torch.long)

    def paired_batch(self, prompt: str, images: Any) -> PairedBatch:
        """The prompt with each image (its features at the processor's image-token positions) and
        without it, left-padded together; ``image_mask`` marks the image-token positions."""
        split_prompt(prompt)
        pictures = self.encode(images)
        with_img, image_rows = [], []
        for pic in pictures:
            enc = self.processor(text=prompt, images=pic, return_tensors="pt")
            ids = enc["input_ids"][0]
            feats = self.image_features(enc)
            where = ids == self.image_token_id
            if int(where.sum()) != feats.shape[0]:
                raise InputError(f"the processor made {int(where.sum())} image tokens but the vision tower gave "
                                 f"{feats.shape[0]} features; check that the processor matches the checkpoint")
            emb = self.token_embeds(ids).clone()
            emb[where.to(emb.device)] = feats.to(emb.dtype)
            with_img.append(emb)
            image_rows.append(where)
        without = [self.token_embeds(self.text_only_ids(prompt))] * len(pictures)
        embeds, mask, pos = left_pad(with_img + without)
        image_mask = torch.zeros_like(mask, dtype=torch.bool)
        for i, where in enumerate(image_rows):
            image_mask[i, embeds.shape[1] - where.shape[0]:] = where
        return PairedBatch(embeds.detach(), mask, pos, image_mask, n=len(pictures))


def load_hf_vlm(folder: str, kind: str, device: str = "cpu", dtype: str = "float32") -> HFVisionAdapter:
    """``HFVisionAdapter`` with the dtype named as on the command line (``--dtype``)."""
    from workbench.models import DTYPES

    return HFVisionAdapter(str(folder), kind=kind, dtype=DTYPES.get(str(dtype), torch.float32), device=device)
