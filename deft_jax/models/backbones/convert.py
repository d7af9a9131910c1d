"""PyTorch checkpoint names (timm and HF ``transformers``) -> deft_jax backbone names.

Every checkpoint key must be claimed by exactly one rule: a rename (with its layout change), an
explicit drop with a reason (HF's unused ViT pooler, MAE's pretraining decoder), or a buffer that
carries no information (BN ``num_batches_tracked``). Anything else is an error that names the key,
so a checkpoint of a slightly different architecture cannot half-load.

Rules match the whole key; the last regex group is the PyTorch leaf name (``weight``, ``bias``,
``running_mean``, ``running_var``) except for ``param`` rules, which copy a bare tensor. A rule's target is a
template over the pattern's named index groups, so that one row serves the timm and the HF key of a module.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from deft_jax.models.weights import CheckpointMismatchError

_BN = r"(weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"
_QKV_SLOT = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_FORMATS = ("timm", "hf")

# The index groups that key patterns name and targets use: ``s`` a stage, ``b`` a block, ``k`` a layer within a
# block; ``qkv`` names the projection of an HF query/key/value tensor.
_S, _B, _K12 = r"(?P<s>\d+)", r"(?P<b>\d+)", r"(?P<k>[12])"


def _within(path: str, timm: str | None, hf: str | None, rows):
  """Rows of the modules inside a repeated unit (a block), given relative to its path and to each format's key."""
  return [(f"{path}/{sub}", kind, t and rf"{timm}\.{t}", h and rf"{hf}\.{h}") for sub, kind, t, h in rows]


# One row per deft_jax module: (its path, kind, timm key, HF key); None where a format has no such key.
_RESNET = [
    ("stem_conv", "conv", r"conv1\.(weight)", r"embedder\.embedder\.convolution\.(weight)"),
    ("stem_bn", "bn", rf"bn1\.{_BN}", rf"embedder\.embedder\.normalization\.{_BN}"),
    *_within("stage{s}_block{b}", rf"layer{_S}\.{_B}", rf"encoder\.stages\.{_S}\.layers\.{_B}", [
        ("conv{k}", "conv", r"conv(?P<k>[123])\.(weight)", r"layer\.(?P<k>[012])\.convolution\.(weight)"),
        ("bn{k}", "bn", rf"bn(?P<k>[123])\.{_BN}", rf"layer\.(?P<k>[012])\.normalization\.{_BN}"),
        ("proj_conv", "conv", r"downsample\.0\.(weight)", r"shortcut\.convolution\.(weight)"),
        ("proj_bn", "bn", rf"downsample\.1\.{_BN}", rf"shortcut\.normalization\.{_BN}"),
    ]),
    ("head", "dense", rf"fc\.{_WB}", rf"classifier\.1\.{_WB}"),
]
_CONVNEXT = [
    ("stem_conv", "conv", rf"stem\.0\.{_WB}", rf"embeddings\.patch_embeddings\.{_WB}"),
    ("stem_norm", "ln", rf"stem\.1\.{_WB}", rf"embeddings\.layernorm\.{_WB}"),
    ("downsample{s}_norm", "ln", rf"stages\.{_S}\.downsample\.0\.{_WB}",
     rf"encoder\.stages\.{_S}\.downsampling_layer\.0\.{_WB}"),
    ("downsample{s}_conv", "conv", rf"stages\.{_S}\.downsample\.1\.{_WB}",
     rf"encoder\.stages\.{_S}\.downsampling_layer\.1\.{_WB}"),
    *_within("stage{s}_block{b}", rf"stages\.{_S}\.blocks\.{_B}", rf"encoder\.stages\.{_S}\.layers\.{_B}", [
        ("dwconv", "conv", rf"conv_dw\.{_WB}", rf"dwconv\.{_WB}"),
        ("norm", "ln", rf"norm\.{_WB}", rf"layernorm\.{_WB}"),
        ("fc{k}", "dense", rf"mlp\.fc{_K12}\.{_WB}", rf"pwconv{_K12}\.{_WB}"),
        ("gamma", "param", r"gamma", r"layer_scale_parameter"),
    ]),
    ("norm", "ln", rf"head\.norm\.{_WB}", rf"layernorm\.{_WB}"),
    ("head", "dense", rf"head\.fc\.{_WB}", rf"classifier\.{_WB}"),
]
# HF ViT blocks are ``encoder.layer.{i}`` in save_pretrained files and on the hub, ``layers.{i}`` in transformers
# >= 5's ``model.state_dict()``: the norms are named alike in both, attention and MLP are not. timm fuses query,
# key and value into one ``qkv``.
_VIT = [
    ("cls_token", "param", r"cls_token", r"embeddings\.cls_token"),
    ("pos_embed", "param", r"pos_embed", r"embeddings\.position_embeddings"),
    ("patch_embed", "conv", rf"patch_embed\.proj\.{_WB}", rf"embeddings\.patch_embeddings\.projection\.{_WB}"),
    *_within("block{b}", rf"blocks\.{_B}", rf"(?:encoder\.layer|layers)\.{_B}", [
        ("norm{k}", "ln", rf"norm{_K12}\.{_WB}", None),
        ("norm1", "ln", None, rf"layernorm_before\.{_WB}"),
        ("norm2", "ln", None, rf"layernorm_after\.{_WB}"),
        ("attn/qkv", "qkv", rf"attn\.qkv\.{_WB}", None),
        ("attn/out", "attn_out", rf"attn\.proj\.{_WB}", None),
        ("mlp/fc{k}", "dense", rf"mlp\.fc{_K12}\.{_WB}", None),
    ]),
    *_within("block{b}", None, rf"encoder\.layer\.{_B}", [
        ("attn/qkv", "qkv_part", None, rf"attention\.attention\.(?P<qkv>query|key|value)\.{_WB}"),
        ("attn/out", "attn_out", None, rf"attention\.output\.dense\.{_WB}"),
        ("mlp/fc1", "dense", None, rf"intermediate\.dense\.{_WB}"),
        ("mlp/fc2", "dense", None, rf"output\.dense\.{_WB}"),
    ]),
    *_within("block{b}", None, rf"layers\.{_B}", [
        ("attn/qkv", "qkv_part", None, rf"attention\.(?P<qkv>q|k|v)_proj\.{_WB}"),
        ("attn/out", "attn_out", None, rf"attention\.o_proj\.{_WB}"),
        ("mlp/fc{k}", "dense", None, rf"mlp\.fc{_K12}\.{_WB}"),
    ]),
    ("norm", "ln", rf"norm\.{_WB}", rf"layernorm\.{_WB}"),
    ("fc_norm", "ln", rf"fc_norm\.{_WB}", None),
    ("head", "dense", rf"head\.{_WB}", rf"classifier\.{_WB}"),
]

# Where a format counts from another base than the deft_jax names (stages and blocks from 0, layers in a block
# from 1): timm's ResNet stages are ``layer1``..``layer4``, HF's ResNet layers in a block ``layer.0``..``layer.2``.
_RENUMBER = {("resnet", "timm"): {"s": -1}, ("resnet", "hf"): {"k": 1}}


def _by_format(rows) -> dict[str, list[tuple[str, str, str]]]:
  """Each format's rules, (key pattern, target, kind), from a family's rows."""
  return {fmt: [(keys[i], target, kind) for target, kind, *keys in rows if keys[i] is not None]
          for i, fmt in enumerate(_FORMATS)}


# (family, format) -> [(key pattern, deft_jax module path, kind)]
RULES: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    (family, fmt): rules for family, rows in (("resnet", _RESNET), ("convnext", _CONVNEXT), ("vit", _VIT))
    for fmt, rules in _by_format(rows).items()}

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


def _target(template: str, m: re.Match, renumber: Mapping[str, int]) -> str:
  """The deft_jax path of the key ``m`` matched, its indices renumbered to the deft_jax counts."""
  return template.format(**{g: int(v) + renumber[g] if g in renumber else v for g, v in m.groupdict().items()})


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
  renumber = _RENUMBER.get((family, fmt), {})
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
    path = f"{coll}/{_target(target, m, renumber)}" + (f"/{leaf_name}" if leaf_name else "")
    if kind == "qkv_part":
      slot = _QKV_SLOT[m["qkv"]]
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
