"""The same VHD / VHR analysis on a Hugging Face LLaVA model (``LlavaForConditionalGeneration``)
when a user has its weights locally. UNTESTED here: no LLaVA weights are reachable offline.

The adapter gives the analysis the three things it uses from ``VisionLanguageModel``:
``lm`` (a workbench ``Model`` over the language half, with the canonical hook points, so
``blocks.{l}.attn.hook_z`` is read through the caching layer), ``token_embeds(ids)`` and
``paired_batch(prompt, images)`` (the prompt with its image features spliced in at the
image-token positions, and the same prompt with the placeholder removed)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import InputError, ModelNotAvailable
from analyses.vision_heads.vlm.model import IMAGE_TOKEN, PairedBatch, left_pad, split_prompt


class _CausalView(nn.Module):
    """A causal-LM-shaped view of LLaVA's language half (``.model`` = the decoder stack,
    ``lm_head``), so the workbench hook points install as on any Llama."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.model, self.lm_head, self.config = decoder, lm_head, decoder.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

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


class HFLlavaAdapter:
    """A local LLaVA checkpoint behind the interface the vision-head analysis uses."""

    def __init__(self, folder: str, dtype: torch.dtype = torch.float16, device: str = "cpu") -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        from workbench.hooks import install_hook_points
        from workbench.models import Model, shape_of

        try:
            self.full = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailable(f"cannot load a LLaVA model from '{folder}' ({type(exc).__name__}); give a local "
                                    "folder holding a LlavaForConditionalGeneration checkpoint and its processor") from None
        for p in self.full.parameters():
            p.requires_grad_(False)
        view = _CausalView(self.full.model.language_model, self.full.lm_head)
        arch, points = install_hook_points(view)
        tok = self.processor.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.lm = Model(name=f"llava:{folder}", hf=view, tokenizer=tok, shape=shape_of(view), arch=arch,
                        source=f"LLaVA language model from {folder}", hook_points=points)
        self.name = self.lm.name

    def token_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.hf.get_input_embeddings()(ids.to(self.lm.device))

    def encode(self, images: Any) -> list:
        """Images as PIL pictures for the processor (the processor does the resizing)."""
        from PIL import Image

        from workbench.vision.images import to_rgb_float

        arrays = images if isinstance(images, (list, tuple)) else [images]
        return [Image.fromarray((to_rgb_float(np.asarray(a)) * 255).astype(np.uint8)) for a in arrays]

    def paired_batch(self, prompt: str, images: Any) -> PairedBatch:
        split_prompt(prompt)
        pictures = self.encode(images)
        image_id = self.full.config.image_token_id
        with_img, image_rows = [], []
        for pic in pictures:
            enc = self.processor(text=prompt, images=pic, return_tensors="pt")
            ids = enc["input_ids"][0]
            with torch.no_grad():
                feats = self.full.get_image_features(pixel_values=enc["pixel_values"].to(self.lm.device, self.lm.dtype))
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
            emb = self.token_embeds(ids).clone()
            where = ids == image_id
            if int(where.sum()) != feats.shape[0]:
                raise InputError(f"the processor made {int(where.sum())} image tokens but the vision tower gave "
                                 f"{feats.shape[0]} features; check the processor matches the checkpoint")
            emb[where] = feats.to(emb.dtype)
            with_img.append(emb)
            image_rows.append(where)
        text_ids = torch.tensor(self.lm.tokenizer.encode(prompt.replace(IMAGE_TOKEN, ""), add_special_tokens=True))
        without = [self.token_embeds(text_ids)] * len(pictures)
        embeds, mask, pos = left_pad(with_img + without)
        image_mask = torch.zeros_like(mask, dtype=torch.bool)
        for i, where in enumerate(image_rows):
            image_mask[i, embeds.shape[1] - where.shape[0]:] = where
        return PairedBatch(embeds.detach(), mask, pos, image_mask, n=len(pictures))
