"""timm-layout checkpoints land in the same places as the HF layout of the same weights.

The HF layout is pinned to the PyTorch models by test_backbones_hf_parity.py; here the test renames
the same random tensors into timm's state-dict names (timm's resnet.py, convnext.py and
vision_transformer.py: ``layer{i}.{j}.conv1``, ``stages.{i}.blocks.{j}.conv_dw``, fused
``blocks.{i}.attn.qkv``, ...) and checks that both files load to identical variable trees, so every
timm tensor reaches the parameter its HF twin reaches. Parity with timm's own models is not tested: timm needs
torchvision, and PyPI's torchvision does not import beside the CPU build of torch that requirements-test.txt pins
(``operator torchvision::nms does not exist``); the one torchvision that does is a 5.5 GB CUDA build.
"""

import re

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from deft_jax.models.backbones import get_backbone, load_pretrained
from deft_jax.models.weights import CheckpointMismatchError

NUM_CLASSES = 7
_RNG = np.random.default_rng(0)


def rand(*shape):
  return _RNG.normal(size=shape).astype(np.float32)


def _bn(prefix, c):
  return {f"{prefix}.weight": rand(c), f"{prefix}.bias": rand(c), f"{prefix}.running_mean": rand(c),
          f"{prefix}.running_var": np.abs(rand(c)) + 0.5, f"{prefix}.num_batches_tracked": np.array(3)}


def hf_resnet_state(width=8, depths=(2, 1, 1, 1)):
  """HF ResNetForImageClassification names, random tensors."""
  sd = {"resnet.embedder.embedder.convolution.weight": rand(width, 3, 7, 7),
        **_bn("resnet.embedder.embedder.normalization", width)}
  cin = width
  for s, depth in enumerate(depths):
    w = width * 2**s
    for b in range(depth):
      p = f"resnet.encoder.stages.{s}.layers.{b}"
      for c, (o, i, k) in enumerate([(w, cin, 1), (w, w, 3), (4 * w, w, 1)]):
        sd[f"{p}.layer.{c}.convolution.weight"] = rand(o, i, k, k)
        sd.update(_bn(f"{p}.layer.{c}.normalization", o))
      if b == 0:
        sd[f"{p}.shortcut.convolution.weight"] = rand(4 * w, cin, 1, 1)
        sd.update(_bn(f"{p}.shortcut.normalization", 4 * w))
      cin = 4 * w
  sd["classifier.1.weight"], sd["classifier.1.bias"] = rand(NUM_CLASSES, cin), rand(NUM_CLASSES)
  return sd


def hf_convnext_state(dims=(8, 16, 32, 64), depths=(2, 1, 1, 1)):
  sd = {"convnext.embeddings.patch_embeddings.weight": rand(dims[0], 3, 4, 4),
        "convnext.embeddings.patch_embeddings.bias": rand(dims[0]),
        "convnext.embeddings.layernorm.weight": rand(dims[0]), "convnext.embeddings.layernorm.bias": rand(dims[0])}
  for s, (d, depth) in enumerate(zip(dims, depths)):
    p = f"convnext.encoder.stages.{s}"
    if s:
      sd.update({f"{p}.downsampling_layer.0.weight": rand(dims[s - 1]),
                 f"{p}.downsampling_layer.0.bias": rand(dims[s - 1]),
                 f"{p}.downsampling_layer.1.weight": rand(d, dims[s - 1], 2, 2),
                 f"{p}.downsampling_layer.1.bias": rand(d)})
    for b in range(depth):
      q = f"{p}.layers.{b}"
      sd.update({f"{q}.dwconv.weight": rand(d, 1, 7, 7), f"{q}.dwconv.bias": rand(d),
                 f"{q}.layernorm.weight": rand(d), f"{q}.layernorm.bias": rand(d),
                 f"{q}.pwconv1.weight": rand(4 * d, d), f"{q}.pwconv1.bias": rand(4 * d),
                 f"{q}.pwconv2.weight": rand(d, 4 * d), f"{q}.pwconv2.bias": rand(d),
                 f"{q}.layer_scale_parameter": rand(d)})
  sd.update({"convnext.layernorm.weight": rand(dims[-1]), "convnext.layernorm.bias": rand(dims[-1]),
             "classifier.weight": rand(NUM_CLASSES, dims[-1]), "classifier.bias": rand(NUM_CLASSES)})
  return sd


def hf_vit_state(d=32, depth=2, mlp=64, grid=4, patch=8):
  sd = {"vit.embeddings.cls_token": rand(1, 1, d), "vit.embeddings.position_embeddings": rand(1, 1 + grid**2, d),
        "vit.embeddings.patch_embeddings.projection.weight": rand(d, 3, patch, patch),
        "vit.embeddings.patch_embeddings.projection.bias": rand(d)}
  for i in range(depth):
    p = f"vit.encoder.layer.{i}"
    for name, (o, n) in {"attention.attention.query": (d, d), "attention.attention.key": (d, d),
                         "attention.attention.value": (d, d), "attention.output.dense": (d, d),
                         "intermediate.dense": (mlp, d), "output.dense": (d, mlp)}.items():
      sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"] = rand(o, n), rand(o)
    for ln in ("layernorm_before", "layernorm_after"):
      sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"] = rand(d), rand(d)
  sd.update({"vit.layernorm.weight": rand(d), "vit.layernorm.bias": rand(d),
             "classifier.weight": rand(NUM_CLASSES, d), "classifier.bias": rand(NUM_CLASSES)})
  return sd


def rename(sd, rules):
  out = {}
  for k, v in sd.items():
    for pattern, repl in rules:
      k = re.sub(pattern, repl, k)
    out[k] = v
  return out


def to_timm_resnet(sd):
  return rename(sd, [
      (r"^resnet\.embedder\.embedder\.convolution", "conv1"),
      (r"^resnet\.embedder\.embedder\.normalization", "bn1"),
      (r"^resnet\.encoder\.stages\.(\d+)", lambda m: f"layer{int(m[1]) + 1}"),
      (r"\.layers\.(\d+)\.layer\.(\d)\.convolution", lambda m: f".{m[1]}.conv{int(m[2]) + 1}"),
      (r"\.layers\.(\d+)\.layer\.(\d)\.normalization", lambda m: f".{m[1]}.bn{int(m[2]) + 1}"),
      (r"\.layers\.(\d+)\.shortcut\.convolution", r".\1.downsample.0"),
      (r"\.layers\.(\d+)\.shortcut\.normalization", r".\1.downsample.1"),
      (r"^classifier\.1", "fc"),
  ])


def to_timm_convnext(sd):
  return rename(sd, [
      (r"^convnext\.layernorm", "head.norm"), (r"^classifier", "head.fc"),
      (r"^convnext\.embeddings\.patch_embeddings", "stem.0"),
      (r"^convnext\.embeddings\.layernorm", "stem.1"),
      (r"^convnext\.encoder\.stages\.(\d+)\.downsampling_layer", r"stages.\1.downsample"),
      (r"^convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)", r"stages.\1.blocks.\2"),
      (r"\.dwconv\.", ".conv_dw."), (r"\.layernorm\.", ".norm."), (r"\.pwconv(\d)\.", r".mlp.fc\1."),
      (r"\.layer_scale_parameter$", ".gamma"),
  ])


def to_timm_vit(sd):
  out = rename({k: v for k, v in sd.items() if ".attention.attention." not in k}, [
      (r"^vit\.embeddings\.cls_token", "cls_token"), (r"^vit\.embeddings\.position_embeddings", "pos_embed"),
      (r"^vit\.embeddings\.patch_embeddings\.projection", "patch_embed.proj"),
      (r"^vit\.encoder\.layer\.(\d+)\.layernorm_before", r"blocks.\1.norm1"),
      (r"^vit\.encoder\.layer\.(\d+)\.layernorm_after", r"blocks.\1.norm2"),
      (r"^vit\.encoder\.layer\.(\d+)\.attention\.output\.dense", r"blocks.\1.attn.proj"),
      (r"^vit\.encoder\.layer\.(\d+)\.intermediate\.dense", r"blocks.\1.mlp.fc1"),
      (r"^vit\.encoder\.layer\.(\d+)\.output\.dense", r"blocks.\1.mlp.fc2"),
      (r"^vit\.layernorm", "norm"), (r"^classifier", "head"),
  ])
  for k in sd:  # timm fuses q, k, v row-wise into one Linear(D, 3D)
    m = re.fullmatch(r"vit\.encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", k)
    if m:
      parts = [sd[k.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
      out[f"blocks.{m[1]}.attn.qkv.{m[2]}"] = np.concatenate(parts, axis=0)
  return out


def _write(tmp_path, name, sd):
  path = tmp_path / f"{name}.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  return path


def _load(spec_name, path, keep_head=True, **overrides):
  spec = get_backbone(spec_name)
  model = spec.build(NUM_CLASSES, **overrides)
  # Zero variables of the right shapes (all values come from the file; a compiled init is slow).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), spec.dummy_images(1, model), train=False))
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return load_pretrained(spec, init, path, keep_head=keep_head)


_CASES = {
    "resnet": ("resnet_tiny", hf_resnet_state, to_timm_resnet, dict(depths=(2, 1, 1, 1))),
    "convnext": ("convnext_tiny_test", hf_convnext_state, to_timm_convnext, dict(depths=(2, 1, 1, 1))),
    "vit": ("vit_tiny_test", hf_vit_state, to_timm_vit, {}),
}


@pytest.mark.parametrize("family", sorted(_CASES))
def test_timm_layout_loads_to_the_same_tree_as_hf_layout(tmp_path, family):
  spec_name, make_hf, to_timm, overrides = _CASES[family]
  hf = make_hf()
  timm_sd = to_timm(hf)
  assert not any(k.startswith(("resnet.", "convnext.", "vit.")) for k in timm_sd)  # fully renamed
  from_hf = _load(spec_name, _write(tmp_path, "hf", hf), **overrides)
  from_timm = _load(spec_name, _write(tmp_path, "timm", timm_sd), **overrides)
  assert jax.tree.structure(from_hf) == jax.tree.structure(from_timm)
  jax.tree.map(np.testing.assert_array_equal, from_hf, from_timm)


def test_timm_resnet_tensors_land_in_named_places(tmp_path):
  sd = to_timm_resnet(hf_resnet_state())
  v = _load("resnet_tiny", _write(tmp_path, "timm", sd), depths=(2, 1, 1, 1))
  p, s = v["params"], v["batch_stats"]
  np.testing.assert_array_equal(p["stage1_block0"]["conv2"]["kernel"],
                                sd["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["stage0_block1"]["bn3"]["scale"], sd["layer1.1.bn3.weight"])
  np.testing.assert_array_equal(s["stage3_block0"]["proj_bn"]["var"], sd["layer4.0.downsample.1.running_var"])
  np.testing.assert_array_equal(s["stem_bn"]["mean"], sd["bn1.running_mean"])
  np.testing.assert_array_equal(p["head"]["kernel"], sd["fc.weight"].T)


def test_timm_vit_fused_qkv_splits_into_query_key_value_heads(tmp_path):
  hf = hf_vit_state()
  v = _load("vit_tiny_test", _write(tmp_path, "timm", to_timm_vit(hf)))
  qkv = v["params"]["block1"]["attn"]["qkv"]["kernel"]  # [D, 3, H, Dh], H = 2
  key_w = hf["vit.encoder.layer.1.attention.attention.key.weight"]  # [H*Dh, D]
  np.testing.assert_array_equal(qkv[:, 1, 1, :], key_w[16:32].T)  # head 1 of the keys
  out = v["params"]["block1"]["attn"]["out"]["kernel"]  # [H, Dh, D]
  np.testing.assert_array_equal(out[0], hf["vit.encoder.layer.1.attention.output.dense.weight"][:, :16].T)


def test_timm_avg_pooled_vit_loads_its_fc_norm(tmp_path):
  sd = rename(to_timm_vit(hf_vit_state()), [(r"^norm\.", "fc_norm.")])
  v = _load("mae_vit_tiny_test", _write(tmp_path, "timm", sd))  # pool="avg"
  np.testing.assert_array_equal(v["params"]["fc_norm"]["bias"], sd["fc_norm.bias"])
  with pytest.raises(CheckpointMismatchError, match="fc_norm/bias"):  # token model: fc_norm is unexpected
    _load("vit_tiny_test", _write(tmp_path, "timm2", sd))


def test_timm_key_of_another_architecture_is_named(tmp_path):
  sd = to_timm_vit(hf_vit_state())
  sd["blocks.0.ls1.gamma"] = rand(32)  # layer-scale ViT (e.g. DeiT-III): not this model
  with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.ls1\.gamma"):
    _load("vit_tiny_test", _write(tmp_path, "timm", sd))


def test_pos_embed_is_resampled_to_a_larger_grid_keeping_the_class_token(tmp_path):
  sd = to_timm_vit(hf_vit_state())
  sd["pos_embed"][:, 1:] = rand(1, 1, 32)  # constant over the grid: any interpolation keeps it
  v = _load("vit_tiny_test", _write(tmp_path, "timm", sd), image_size=48)
  pos = np.asarray(v["params"]["pos_embed"])
  assert pos.shape == (1, 1 + 36, 32)
  np.testing.assert_array_equal(pos[:, 0], sd["pos_embed"][:, 0])
  np.testing.assert_allclose(pos[0, 1:], np.broadcast_to(sd["pos_embed"][0, 1], (36, 32)), rtol=1e-5, atol=1e-5)


def test_bf16_checkpoint_loads_as_fp32_values(tmp_path):
  sd = to_timm_resnet(hf_resnet_state())
  path = _write(tmp_path, "bf16", {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v
                                   for k, v in sd.items()})
  v = _load("resnet_tiny", path, depths=(2, 1, 1, 1))
  got = v["params"]["stage2_block0"]["conv3"]["kernel"]
  assert got.dtype == np.float32
  want = sd["layer3.0.conv3.weight"].astype(ml_dtypes.bfloat16).astype(np.float32).transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(got, want)
