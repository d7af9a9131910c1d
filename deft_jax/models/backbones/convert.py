"""PyTorch checkpoint names (timm and HF ``transformers``) -> deft_jax backbone names.

Every checkpoint key must be claimed by exactly one rule: a rename (with its layout change), an
explicit drop with a reason (HF's unused ViT pooler, MAE's pretraining decoder), or a buffer that
carries no information (BN ``num_batches_tracked``). Anything else is an error that names the key,
so a checkpoint of a slightly different architecture cannot half-load.

Rules match the whole key; the last regex group is the PyTorch leaf name (``weight``, ``bias``,
``running_mean``, ``running_var``) except for ``param`` rules, which copy a bare tensor.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from deft_jax.models.weights import CheckpointMismatchError

Target = Callable[[re.Match], str]
_BN = r"(weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"
_QKV_SLOT = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}

# (regex, deft_jax module path, kind)
RULES: dict[tuple[str, str], list[tuple[str, Target, str]]] = {
    ("resnet", "timm"): [
        (r"conv1\.(weight)", lambda m: "stem_conv", "conv"),
        (rf"bn1\.{_BN}", lambda m: "stem_bn", "bn"),
        (r"layer(\d+)\.(\d+)\.conv([123])\.(weight)",
         lambda m: f"stage{int(m[1]) - 1}_block{m[2]}/conv{m[3]}", "conv"),
        (rf"layer(\d+)\.(\d+)\.bn([123])\.{_BN}", lambda m: f"stage{int(m[1]) - 1}_block{m[2]}/bn{m[3]}", "bn"),
        (r"layer(\d+)\.(\d+)\.downsample\.0\.(weight)",
         lambda m: f"stage{int(m[1]) - 1}_block{m[2]}/proj_conv", "conv"),
        (rf"layer(\d+)\.(\d+)\.downsample\.1\.{_BN}", lambda m: f"stage{int(m[1]) - 1}_block{m[2]}/proj_bn", "bn"),
        (rf"fc\.{_WB}", lambda m: "head", "dense"),
    ],
    ("resnet", "hf"): [
        (r"embedder\.embedder\.convolution\.(weight)", lambda m: "stem_conv", "conv"),
        (rf"embedder\.embedder\.normalization\.{_BN}", lambda m: "stem_bn", "bn"),
        (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.([012])\.convolution\.(weight)",
         lambda m: f"stage{m[1]}_block{m[2]}/conv{int(m[3]) + 1}", "conv"),
        (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.([012])\.normalization\.{_BN}",
         lambda m: f"stage{m[1]}_block{m[2]}/bn{int(m[3]) + 1}", "bn"),
        (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.(weight)",
         lambda m: f"stage{m[1]}_block{m[2]}/proj_conv", "conv"),
        (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}",
         lambda m: f"stage{m[1]}_block{m[2]}/proj_bn", "bn"),
        (rf"classifier\.1\.{_WB}", lambda m: "head", "dense"),
    ],
    ("convnext", "timm"): [
        (rf"stem\.0\.{_WB}", lambda m: "stem_conv", "conv"),
        (rf"stem\.1\.{_WB}", lambda m: "stem_norm", "ln"),
        (rf"stages\.(\d+)\.downsample\.0\.{_WB}", lambda m: f"downsample{m[1]}_norm", "ln"),
        (rf"stages\.(\d+)\.downsample\.1\.{_WB}", lambda m: f"downsample{m[1]}_conv", "conv"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.{_WB}", lambda m: f"stage{m[1]}_block{m[2]}/dwconv", "conv"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.norm\.{_WB}", lambda m: f"stage{m[1]}_block{m[2]}/norm", "ln"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.{_WB}",
         lambda m: f"stage{m[1]}_block{m[2]}/fc{m[3]}", "dense"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", lambda m: f"stage{m[1]}_block{m[2]}/gamma", "param"),
        (rf"head\.norm\.{_WB}", lambda m: "norm", "ln"),
        (rf"head\.fc\.{_WB}", lambda m: "head", "dense"),
    ],
    ("convnext", "hf"): [
        (rf"embeddings\.patch_embeddings\.{_WB}", lambda m: "stem_conv", "conv"),
        (rf"embeddings\.layernorm\.{_WB}", lambda m: "stem_norm", "ln"),
        (rf"encoder\.stages\.(\d+)\.downsampling_layer\.0\.{_WB}", lambda m: f"downsample{m[1]}_norm", "ln"),
        (rf"encoder\.stages\.(\d+)\.downsampling_layer\.1\.{_WB}", lambda m: f"downsample{m[1]}_conv", "conv"),
        (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.{_WB}",
         lambda m: f"stage{m[1]}_block{m[2]}/dwconv", "conv"),
        (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.{_WB}",
         lambda m: f"stage{m[1]}_block{m[2]}/norm", "ln"),
        (rf"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv([12])\.{_WB}",
         lambda m: f"stage{m[1]}_block{m[2]}/fc{m[3]}", "dense"),
        (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter",
         lambda m: f"stage{m[1]}_block{m[2]}/gamma", "param"),
        (rf"layernorm\.{_WB}", lambda m: "norm", "ln"),
        (rf"classifier\.{_WB}", lambda m: "head", "dense"),
    ],
    ("vit", "timm"): [
        (r"cls_token", lambda m: "cls_token", "param"),
        (r"pos_embed", lambda m: "pos_embed", "param"),
        (rf"patch_embed\.proj\.{_WB}", lambda m: "patch_embed", "conv"),
        (rf"blocks\.(\d+)\.norm([12])\.{_WB}", lambda m: f"block{m[1]}/norm{m[2]}", "ln"),
        (rf"blocks\.(\d+)\.attn\.qkv\.{_WB}", lambda m: f"block{m[1]}/attn/qkv", "qkv"),
        (rf"blocks\.(\d+)\.attn\.proj\.{_WB}", lambda m: f"block{m[1]}/attn/out", "attn_out"),
        (rf"blocks\.(\d+)\.mlp\.fc([12])\.{_WB}", lambda m: f"block{m[1]}/mlp/fc{m[2]}", "dense"),
        (rf"norm\.{_WB}", lambda m: "norm", "ln"),
        (rf"fc_norm\.{_WB}", lambda m: "fc_norm", "ln"),
        (rf"head\.{_WB}", lambda m: "head", "dense"),
    ],
    ("vit", "hf"): [
        (r"embeddings\.cls_token", lambda m: "cls_token", "param"),
        (r"embeddings\.position_embeddings", lambda m: "pos_embed", "param"),
        (rf"embeddings\.patch_embeddings\.projection\.{_WB}", lambda m: "patch_embed", "conv"),
        (rf"encoder\.layer\.(\d+)\.layernorm_before\.{_WB}", lambda m: f"block{m[1]}/norm1", "ln"),
        (rf"encoder\.layer\.(\d+)\.layernorm_after\.{_WB}", lambda m: f"block{m[1]}/norm2", "ln"),
        (rf"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.{_WB}",
         lambda m: f"block{m[1]}/attn/qkv", "qkv_part"),
        (rf"encoder\.layer\.(\d+)\.attention\.output\.dense\.{_WB}", lambda m: f"block{m[1]}/attn/out", "attn_out"),
        (rf"encoder\.layer\.(\d+)\.intermediate\.dense\.{_WB}", lambda m: f"block{m[1]}/mlp/fc1", "dense"),
        (rf"encoder\.layer\.(\d+)\.output\.dense\.{_WB}", lambda m: f"block{m[1]}/mlp/fc2", "dense"),
        # transformers >= 5 in-memory names (``model.state_dict()``); save_pretrained and the hub use
        # the legacy names above.
        (rf"layers\.(\d+)\.layernorm_before\.{_WB}", lambda m: f"block{m[1]}/norm1", "ln"),
        (rf"layers\.(\d+)\.layernorm_after\.{_WB}", lambda m: f"block{m[1]}/norm2", "ln"),
        (rf"layers\.(\d+)\.attention\.(q|k|v)_proj\.{_WB}", lambda m: f"block{m[1]}/attn/qkv", "qkv_part"),
        (rf"layers\.(\d+)\.attention\.o_proj\.{_WB}", lambda m: f"block{m[1]}/attn/out", "attn_out"),
        (rf"layers\.(\d+)\.mlp\.fc([12])\.{_WB}", lambda m: f"block{m[1]}/mlp/fc{m[2]}", "dense"),
        (rf"layernorm\.{_WB}", lambda m: "norm", "ln"),
        (rf"classifier\.{_WB}", lambda m: "head", "dense"),
    ],
}

# Keys that are dropped on purpose, by name, with the reason (logged by the loader).
DROPS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("vit", "hf"): [
        (r"pooler\.dense\.(weight|bias)", "HF ViTModel's tanh pooler, not used for classification"),
        (r"embeddings\.mask_token", "masked-image-modelling mask token, not used for classification"),
        (r"decoder\..+", "MAE pretraining decoder, not part of the encoder"),
    ],
}

# Buffers with no information for the model.
IGNORED = (r".*\.num_batches_tracked",)

# HF classification models prefix the trunk with the family name; base models have no prefix.
_HF_PREFIX = re.compile(r"^(resnet|convnext|vit)\.")

FAMILY_NAMES = {"resnet": "ResNet", "convnext": "ConvNeXt", "vit": "ViT"}


def detect_format(keys) -> tuple[str, str]:
  """Returns ``(family, format)`` of a checkpoint from its key names; format is "timm" or "hf"."""
  keys = set(keys)
  ends = lambda suffix: any(k == suffix or k.endswith("." + suffix) for k in keys)
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    return "resnet", "timm"
  if ends("embedder.embedder.convolution.weight"):
    return "resnet", "hf"
  if "stem.0.weight" in keys and any(k.startswith("stages.") for k in keys):
    return "convnext", "timm"
  if ends("embeddings.patch_embeddings.weight"):
    return "convnext", "hf"
  if "patch_embed.proj.weight" in keys:
    return "vit", "timm"
  if ends("embeddings.patch_embeddings.projection.weight"):
    return "vit", "hf"
  sample = "\n  ".join(sorted(keys)[:12])
  raise CheckpointMismatchError(
      "unrecognised checkpoint layout: not a timm or HF transformers ResNet, ConvNeXt or ViT "
      f"(first keys:\n  {sample})")


def _shape_check(key: str, x: np.ndarray, ndim: int, what: str) -> None:
  if x.ndim != ndim:
    raise CheckpointMismatchError(f"{key}: expected a {ndim}-d {what}, got shape {tuple(x.shape)}")


def _leaf(kind: str, key: str, leaf: str | None, x: np.ndarray, num_heads: int | None):
  """(collection, leaf name, converted array) for one PyTorch tensor."""
  if kind == "param":
    return "params", None, x
  if kind == "bn":
    return {"weight": ("params", "scale", x), "bias": ("params", "bias", x),
            "running_mean": ("batch_stats", "mean", x), "running_var": ("batch_stats", "var", x)}[leaf]
  if kind == "ln":
    return "params", {"weight": "scale", "bias": "bias"}[leaf], x
  if leaf == "bias" and kind in ("conv", "dense", "attn_out"):
    return "params", "bias", x
  if kind == "conv":  # torch [out, in/groups, kh, kw] -> flax [kh, kw, in/groups, out]
    _shape_check(key, x, 4, "conv weight")
    return "params", "kernel", x.transpose(2, 3, 1, 0)
  if kind == "dense":  # torch [out, in] -> flax [in, out]
    _shape_check(key, x, 2, "linear weight")
    return "params", "kernel", x.T
  if num_heads is None:
    raise CheckpointMismatchError(f"{key}: attention weights need the model's num_heads")
  if kind == "attn_out":  # torch [D, H*Dh] -> [H, Dh, D]
    _shape_check(key, x, 2, "linear weight")
    return "params", "kernel", x.T.reshape(num_heads, -1, x.shape[0])
  if kind == "qkv":  # timm fused rows [3 * H * Dh] ordered (qkv, head, head_dim)
    if leaf == "weight":
      _shape_check(key, x, 2, "linear weight")
      return "params", "kernel", x.reshape(3, num_heads, -1, x.shape[1]).transpose(3, 0, 1, 2)
    return "params", "bias", x.reshape(3, num_heads, -1)
  if kind == "qkv_part":  # one of HF's query/key/value: [H*Dh, D] -> [D, H, Dh]
    if leaf == "weight":
      _shape_check(key, x, 2, "linear weight")
      return "params", "kernel", x.T.reshape(x.shape[1], num_heads, -1)
    return "params", "bias", x.reshape(num_heads, -1)
  raise AssertionError(kind)


def convert(raw: Mapping[str, np.ndarray], family: str, fmt: str, *, num_heads: int | None = None,
            source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Renames a PyTorch state dict into deft_jax paths.

  Returns:
    ``(converted, dropped)``: ``converted`` maps ``"params/a/b"`` or ``"batch_stats/a/b"`` to
    arrays in Flax layout (classifier included, as ``params/head/...``); ``dropped`` maps each
    checkpoint key deliberately left out to the reason.

  Raises:
    CheckpointMismatchError: naming every key no rule knows, any two keys that land on the same
      parameter, and incomplete HF query/key/value triples.
  """
  rules = [(re.compile(p), t, k) for p, t, k in RULES[(family, fmt)]]
  drops = [(re.compile(p), why) for p, why in DROPS.get((family, fmt), [])]
  out: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  parts: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
  dropped: dict[str, str] = {}
  unknown, clashes = [], []
  for key in sorted(raw):
    name = _HF_PREFIX.sub("", key) if fmt == "hf" else key
    if any(re.fullmatch(p, name) for p in IGNORED):
      dropped[key] = "buffer without information"
      continue
    why = next((w for p, w in drops if p.fullmatch(name)), None)
    if why is not None:
      dropped[key] = why
      continue
    for pattern, target, kind in rules:
      m = pattern.fullmatch(name)
      if m:
        break
    else:
      unknown.append(key)
      continue
    leaf = m[m.re.groups] if kind != "param" else None
    coll, leaf_name, value = _leaf(kind, key, leaf, np.asarray(raw[key]), num_heads)
    path = f"{coll}/{target(m)}" + (f"/{leaf_name}" if leaf_name else "")
    if kind == "qkv_part":
      slot = _QKV_SLOT[m[2]]
      if slot in parts.setdefault(path, {}):
        clashes.append(f"{key} and {parts[path][slot][0]}")
      parts[path][slot] = (key, value)
      continue
    if path in out:
      clashes.append(f"{key} and {origin[path]} -> {path}")
    out[path], origin[path] = value, key
  for path, slots in parts.items():
    if len(slots) != 3:
      have = sorted(k for k, _ in slots.values())
      missing = [n for n, s in list(_QKV_SLOT.items())[:3] if s not in slots]
      raise CheckpointMismatchError(
          f"{source}: incomplete attention projection for {path}: have {have}, missing {missing}")
    axis = 1 if path.endswith("/kernel") else 0
    out[path] = np.stack([slots[s][1] for s in range(3)], axis=axis)
  if unknown or clashes:
    msg = [f"{source} is a {fmt} {FAMILY_NAMES[family]} checkpoint, but:"]
    if unknown:
      more = f"\n  ... and {len(unknown) - 40} more" if len(unknown) > 40 else ""
      msg.append(f"{len(unknown)} key(s) the {fmt} {FAMILY_NAMES[family]} mapping does not know:\n  "
                 + "\n  ".join(unknown[:40]) + more)
    if clashes:
      msg.append("keys mapping to the same parameter:\n  " + "\n  ".join(clashes))
    raise CheckpointMismatchError("\n".join(msg))
  return out, dropped
