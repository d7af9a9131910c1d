"""Parameter-efficient fine-tuning (PEFT) of the CLIP visual encoder: its configuration and its names.

All methods are off by default and configured by one frozen dataclass, :class:`PEFTConfig`, so that the
model code stays a pure function of (config, params, inputs); the config sections ``detect.peft``,
``adapt.peft`` and ``baselines.peft`` are its fields (config_lib.peft_config). The modules that add the
parameters live with the model (models/clip.py: ``LoRA``, ``SSF``, ``Adapter``, the VPT tokens of ``Block``);
which parameters *train* is decided by the optimiser rules (:func:`trainable_patterns` names them).

Adding a PEFT method is this file (a field of PEFTConfig and BlockPEFT, its parameter names in
PARAM_PATTERNS, the block-level settings in PEFTConfig.block) and models/clip.py (its module and where a
block calls it). No JAX here: loading a config reads these defaults.

At initialisation LoRA (B = 0) and the residual adapter (``adapter_residual``) leave the pretrained function
unchanged. The reference's adapter replaces each MLP output by up(relu(down(LN(h)))) with up = 0, so at init
the blocks' MLPs contribute nothing; the reference's SSF starts at scale ~ N(1, 0.02), shift ~ N(0, 0.02); VPT
adds tokens. Those three change it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from deft_jax.errors import ConfigError

LORA_TARGETS = ("q", "k", "v", "out", "fc1", "fc2")
SSF_SITES = ("q", "k", "v", "out", "fc1", "fc2")

# The names of the parameters PEFT adds: the one place that spells them. The model names its modules with
# these functions, and every pattern that finds PEFT parameters (optimiser rules, the checkpoint loader's
# "a pretrained CLIP never has these") comes from PARAM_PATTERNS.
VPT_PARAM = "vpt_prompt"
ADAPTER = "adapter"


def lora_name(site: str) -> str:
  return f"{site}_lora"


def ssf_name(site: str) -> str:
  return f"ssf_{site}"


# Full-match regexes on a parameter's path inside one transformer block, by method.
PARAM_PATTERNS = {
    "vpt": VPT_PARAM,
    "lora": lora_name("[a-z0-9]+") + "/.*",
    "adapter": ADAPTER + "/.*",
    "ssf": ".*" + ssf_name("[a-z0-9]+") + "/.*",
}


@dataclasses.dataclass(frozen=True)
class PEFTConfig:
  """Which PEFT parameters exist in the visual encoder.

  Attributes:
    vpt: "none", "shallow" (prompts before the first block, carried through) or "deep"
      (each block's prompt outputs are replaced by the next block's own prompts).
    vpt_tokens: prompt tokens per block (the method's default is 20).
    lora_rank: LoRA rank; 0 disables LoRA.
    lora_alpha: LoRA's residual is scaled by alpha / rank. The reference scales B(A(x)) by 1 / rank (alpha = 1,
      the default); None means a scale of 1 (unscaled).
    lora_targets: projections that get LoRA, among q, k, v, out (attention) and fc1, fc2 (MLP).
    adapter_dim: bottleneck width of the adapter after each MLP; 0 disables it.
    adapter_residual: False (the reference): the adapter's output replaces the MLP's in the residual stream;
      True: it is added to the MLP's (the pretrained function at init).
    ssf: learnable scale and shift after q/k/v, attention output, fc1 and fc2.
    bitfit: train every bias of the image tower, as the reference: the blocks' (``bitfit_biases``) and
      ln_pre's and ln_post's (no new parameters; only the optimiser rules change).
    bitfit_biases: regex (on the path inside a block) of the block biases BitFit trains.
    partial: restrict every method to the last `partial` blocks; None means all blocks.
  """

  vpt: str = "none"
  vpt_tokens: int = 20
  lora_rank: int = 0
  lora_alpha: Optional[float] = 1.0
  lora_targets: Sequence[str] = ("q", "v")
  adapter_dim: int = 0
  adapter_residual: bool = False
  ssf: bool = False
  bitfit: bool = False
  bitfit_biases: str = ".*bias"
  partial: Optional[int] = None

  def __post_init__(self):
    if self.vpt not in ("none", "shallow", "deep"):
      raise ConfigError(f"peft.vpt must be 'none', 'shallow' or 'deep', got {self.vpt!r}")
    if self.vpt != "none" and self.vpt_tokens <= 0:
      raise ConfigError(f"peft.vpt_tokens must be positive with vpt={self.vpt!r}, got {self.vpt_tokens}")
    unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if unknown:
      raise ConfigError(f"unknown peft.lora_targets {unknown}; choose among {LORA_TARGETS}")
    if self.lora_rank < 0 or self.adapter_dim < 0:
      raise ConfigError("peft.lora_rank and peft.adapter_dim must be >= 0")
    if self.partial is not None and self.partial <= 0:
      raise ConfigError(f"peft.partial must be a positive block count or None, got {self.partial}")
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

  @classmethod
  def from_dict(cls, d: Optional[Any]) -> "PEFTConfig":
    """Builds from a dict / ConfigDict, rejecting unknown fields by name."""
    if d is None:
      return cls()
    if isinstance(d, cls):
      return d
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"unknown PEFT option(s) {unknown}; known: {sorted(known)}")
    return cls(**d)

  @property
  def lora_scale(self) -> float:
    return 1.0 if self.lora_alpha is None else float(self.lora_alpha) / self.lora_rank

  def active_blocks(self, num_layers: int) -> range:
    k = num_layers if self.partial is None else min(self.partial, num_layers)
    return range(num_layers - k, num_layers)

  def block(self, i: int, num_layers: int) -> "BlockPEFT":
    """The PEFT seen by block i of a tower with `num_layers` blocks."""
    active = self.active_blocks(num_layers)
    if i not in active:
      return BlockPEFT()
    first = active[0]
    if self.vpt == "deep":
      prompt = "replace" if i > first else "append"
    elif self.vpt == "shallow":
      prompt = "append" if i == first else "none"
    else:
      prompt = "none"
    return BlockPEFT(
        prompt=prompt,
        prompt_tokens=self.vpt_tokens if prompt != "none" else 0,
        lora_rank=self.lora_rank,
        lora_scale=self.lora_scale if self.lora_rank else 1.0,
        lora_targets=self.lora_targets if self.lora_rank else (),
        adapter_dim=self.adapter_dim,
        adapter_residual=self.adapter_residual,
        ssf=self.ssf,
    )


@dataclasses.dataclass(frozen=True)
class BlockPEFT:
  """The PEFT of one transformer block (static, hashable)."""

  prompt: str = "none"  # none | append | replace
  prompt_tokens: int = 0
  lora_rank: int = 0
  lora_scale: float = 1.0
  lora_targets: tuple = ()
  adapter_dim: int = 0
  adapter_residual: bool = False
  ssf: bool = False


def trainable_patterns(peft: PEFTConfig, tower: str = "vision_model") -> list[str]:
  """Full-match regexes of the parameters a PEFT config adds or trains."""
  enc = rf"{tower}/encoder/layers(_\d+)?"
  on = {"vpt": peft.vpt != "none", "lora": bool(peft.lora_rank), "adapter": bool(peft.adapter_dim),
        "ssf": peft.ssf}
  pats = [f"{enc}/(.*/)?{PARAM_PATTERNS[m]}" for m, enabled in on.items() if enabled]
  if peft.bitfit:
    pats.append(rf"{enc}/{peft.bitfit_biases}")
    pats.append(rf"{tower}/(pre_layrnorm|post_layernorm)/bias")  # sic: HF's name for ln_pre
  return pats


def vpt_init_bound(patch_size: int, width: int) -> float:
  """VPT's uniform init bound sqrt(6 / (3 * p * p + width)) (~0.0625 for ViT-B/16)."""
  return float(np.sqrt(6.0 / (3 * patch_size * patch_size + width)))
