"""Tiny random LLaVA and SmolVLM (Idefics3) folders, built offline from their transformers
configurations with a small word-level tokenizer, for tests and for trying the ``--llava`` /
``--vlm`` routes without a download. The weights are random: the folders exercise loading,
image-token splicing, hook points and VHD/VHR, not captions worth reading."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workbench.analyses.vision_heads.vlm.objects import OBJECTS

WORDS = ("a", "A", "an", "and", "the", "of", "photo", "picture", "in", "there", "is", "with", ".", ",", ":", "User",
         "Assistant", "Describe", "image")
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>")


def tiny_tokenizer():
    """A word-level fast tokenizer over the scene vocabulary (objects, synonyms, a few words),
    with the special tokens the LLaVA and Idefics3 processors look for."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*WORDS, *(s for o in OBJECTS for s in (o.name, *o.synonyms))]))
    vocab = {t: i for i, t in enumerate([*SPECIALS, *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIALS[4:])})
    return tok


def _text_config(vocab: int, pad: int, layers: int, heads: int, d_model: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
                       pad_token_id=pad, tie_word_embeddings=False)


def build_tiny_llava(folder: str | Path, layers: int = 2, heads: int = 4, d_model: int = 32, image_size: int = 32,
                     patch: int = 8, seed: int = 0) -> Path:
    """A random ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama text model) and its
    ``LlavaProcessor`` saved in ``folder``; ``(image_size / patch)^2`` image tokens."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch, projection_dim=16)
    cfg = LlavaConfig(vision_config=vision, text_config=_text_config(len(tok), tok.pad_token_id, layers, heads, d_model),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).eval()
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    folder = Path(folder)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def build_tiny_smolvlm(folder: str | Path, layers: int = 2, heads: int = 4, d_model: int = 32, image_size: int = 32,
                       patch: int = 8, scale_factor: int = 2, seed: int = 0) -> Path:
    """A random ``Idefics3ForConditionalGeneration`` (SmolVLM's architecture: SigLIP-style vision
    tower, pixel-shuffle connector, Llama text model) and its ``Idefics3Processor`` (no image
    splitting) saved in ``folder``; ``(image_size / patch / scale_factor)^2`` image tokens."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    vision = Idefics3VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=image_size, patch_size=patch)
    # pad_token_id: a keyword Idefics3Config's __post_init__ takes, outside the dataclass fields its signature lists
    pad: dict[str, Any] = {"pad_token_id": tok.pad_token_id}
    cfg = Idefics3Config(vision_config=vision.to_dict(),
                         text_config=_text_config(len(tok), tok.pad_token_id, layers, heads, d_model).to_dict(),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale_factor, **pad)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                    max_image_size={"longest_edge": image_size})
    n_tokens = (image_size // patch) ** 2 // scale_factor ** 2
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=n_tokens)
    folder = Path(folder)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
