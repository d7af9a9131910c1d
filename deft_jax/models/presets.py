"""CLIP architecture presets and conversion from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from deft_jax.errors import ConfigError, MissingFileError


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  ln_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  context_length: int = 77
  width: int = 512
  layers: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  ln_eps: float = 1e-5
  # Pooling token: checkpoints whose config says eos_token_id == 2 (all OpenAI ones) pool at the argmax of
  # the ids (the end-of-text id is the largest); others pool at the first occurrence of eos_token_id.
  eos_token_id: int = 2


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture and numerics of a CLIP model.

  ``dtype`` is the compute dtype ("float32" or "bfloat16"); parameters are always float32 and LayerNorm and
  softmax run in float32. ``attention`` picks the ``jax.nn.dot_product_attention`` implementation
  (None = XLA, "cudnn" = fused kernel on NVIDIA GPUs). ``remat`` recomputes each block in the backward pass;
  ``scan`` compiles one block and scans it over layers (every block must then carry the same PEFT).
  """

  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  embed_dim: int = 512
  logit_scale_init: float = 2.6592
  act: str = "quick_gelu"
  dtype: str = "float32"
  attention: Optional[str] = None
  remat: bool = False
  scan: bool = False

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)


_B_TEXT = TextConfig()
_L_TEXT = TextConfig(width=768, layers=12, heads=12, mlp_dim=3072)

PRESETS: dict[str, CLIPConfig] = {
    "vit_b32": CLIPConfig(VisionConfig(patch_size=32), _B_TEXT, 512),
    "vit_b16": CLIPConfig(VisionConfig(patch_size=16), _B_TEXT, 512),
    "vit_l14": CLIPConfig(VisionConfig(224, 14, 1024, 24, 16, 4096), _L_TEXT, 768),
    "vit_l14_336": CLIPConfig(VisionConfig(336, 14, 1024, 24, 16, 4096), _L_TEXT, 768),
    # Tests: a few thousand parameters apart from the 49408-token embedding table.
    "tiny": CLIPConfig(
        VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64),
        TextConfig(width=32, layers=2, heads=2, mlp_dim=64), embed_dim=24),
    # The small real VLM pretrained offline on CIFAR-sized images (deft_jax.pretrain).
    # Sized so that pretraining plus detection fit in minutes on 2 CPU cores.
    "tiny_32px": CLIPConfig(
        VisionConfig(image_size=32, patch_size=4, width=96, layers=4, heads=3, mlp_dim=384),
        TextConfig(width=128, layers=3, heads=2, mlp_dim=512, context_length=32), embed_dim=128),
}

# Hub ids of the official checkpoints, by preset.
HUB_IDS = {
    "vit_b32": "openai/clip-vit-base-patch32",
    "vit_b16": "openai/clip-vit-base-patch16",
    "vit_l14": "openai/clip-vit-large-patch14",
    "vit_l14_336": "openai/clip-vit-large-patch14-336",
}


def get_preset(name: str, **overrides) -> CLIPConfig:
  """A preset by name, with top-level fields (dtype, remat, ...) overridden."""
  if name not in PRESETS:
    raise ConfigError(f"unknown CLIP preset {name!r}; known presets: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


# The config.json key of each tower field (transformers' CLIPVisionConfig and CLIPTextConfig), both ways;
# eos_token_id is read apart (a list in some configs).
_HF_KEYS = {"image_size": "image_size", "patch_size": "patch_size", "vocab_size": "vocab_size",
            "context_length": "max_position_embeddings", "width": "hidden_size", "layers": "num_hidden_layers",
            "heads": "num_attention_heads", "mlp_dim": "intermediate_size", "ln_eps": "layer_norm_eps"}
# transformers' default where a config.json leaves a key out and it is not the field's own.
_HF_DEFAULTS = {"patch_size": 32}


def _tower_from_hf(cls, hf: Mapping[str, Any], **fields):
  """A VisionConfig or TextConfig from its section of a config.json."""
  return cls(**{f.name: hf.get(_HF_KEYS[f.name], _HF_DEFAULTS.get(f.name, f.default))
                for f in dataclasses.fields(cls) if f.name in _HF_KEYS}, **fields)


def _tower_to_hf(tower) -> dict:
  return {_HF_KEYS[f.name]: getattr(tower, f.name) for f in dataclasses.fields(tower) if f.name in _HF_KEYS}


def from_hf_config(cfg: Mapping[str, Any] | str | Path, **overrides) -> CLIPConfig:
  """Builds a CLIPConfig from a Hugging Face CLIP ``config.json`` (a dict, a file or its directory)."""
  if not isinstance(cfg, Mapping):
    path = Path(cfg)
    if path.is_dir():
      path = path / "config.json"
    if not path.exists():
      raise MissingFileError(f"no CLIP config.json at {path}")
    cfg = json.loads(path.read_text())
  if "vision_config" not in cfg or "text_config" not in cfg:
    raise ConfigError("not a CLIP config.json: it lacks vision_config / text_config "
                     f"(model_type={cfg.get('model_type')!r})")
  v, t = cfg["vision_config"], cfg["text_config"]
  act_v, act_t = v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")
  if act_v != act_t or act_v not in ("quick_gelu", "gelu"):
    raise ConfigError(f"unsupported CLIP activation(s) vision={act_v!r} text={act_t!r}")
  eos = t.get("eos_token_id", 2)
  if isinstance(eos, (list, tuple)):
    eos = eos[0]
  vision = _tower_from_hf(VisionConfig, v)
  text = _tower_from_hf(TextConfig, t, eos_token_id=int(eos if eos is not None else 2))
  out = CLIPConfig(vision=vision, text=text, embed_dim=cfg.get("projection_dim", 512),
                   logit_scale_init=cfg.get("logit_scale_init_value", 2.6592), act=act_v)
  return out.replace(**overrides) if overrides else out


def to_hf_config(cfg: CLIPConfig) -> dict:
  """The inverse of :func:`from_hf_config` (for saving checkpoints that transformers can read)."""
  v, t = cfg.vision, cfg.text
  return {
      "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": cfg.embed_dim,
      "logit_scale_init_value": cfg.logit_scale_init,
      "vision_config": {**_tower_to_hf(v), "hidden_act": cfg.act, "projection_dim": cfg.embed_dim},
      "text_config": {**_tower_to_hf(t), "hidden_act": cfg.act, "eos_token_id": t.eos_token_id,
                      "projection_dim": cfg.embed_dim},
  }
