"""Tiny random CLIP-like models saved to local folders, loadable offline by kenner's encoder specs.

- ``save_open_clip(dir, siglip=False)`` -> ``open_clip:local-dir:DIR`` (open_clip_config.json + safetensors;
  CLIP's BPE tokenizer, so the text vocabulary is CLIP's 49,408 tokens).
- ``save_hf(dir, family)`` -> ``hf:DIR`` for ``clip`` or ``siglip`` (transformers ``save_pretrained``, with a
  CLIPTokenizer written from open_clip's bundled BPE vocabulary: no network).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
import torch
import transformers
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from safetensors.torch import save_file

VOCAB = 49408
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": VOCAB, "width": 16, "heads": 2, "layers": 1},
}


def save_open_clip(directory: Path, *, siglip: bool = False, seed: int = 0) -> str:
    """A tiny random open_clip model in ``directory``; with ``siglip`` it has a logit bias (sigmoid scores)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(TINY_OPEN_CLIP)
    if siglip:
        config["init_logit_bias"] = -1.0
    torch.manual_seed(seed)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    model = open_clip.model.CLIP(**config).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    return f"open_clip:local-dir:{directory}"


def clip_tokenizer(directory: Path) -> transformers.CLIPTokenizer:
    """A transformers CLIPTokenizer built from open_clip's BPE vocabulary (the real CLIP vocabulary)."""
    simple = SimpleTokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # transformers' spelling
    vocab = {special.get(token, token): index for token, index in simple.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    with gzip.open(default_bpe()) as handle:  # the merges SimpleTokenizer uses
        merges = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def save_hf(directory: Path, family: str, *, seed: int = 0) -> str:
    """A tiny random transformers CLIP or SigLIP model with processor and tokenizer in ``directory``."""
    tf = transformers
    torch.manual_seed(seed)
    text = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "vocab_size": VOCAB,
        "max_position_embeddings": 16,
    }
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    }
    if family == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family == "siglip":
        text["hidden_size"] = vision["hidden_size"]  # SigLIP matches pooled text and image outputs directly
        text["pad_token_id"], text["eos_token_id"], text["bos_token_id"] = 49407, 49407, 49406
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        raise ValueError(family)
    model.eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    clip_tokenizer(directory / "tokenizer_files").save_pretrained(directory)
    return f"hf:{directory}"
