"""Backbones vs the PyTorch ``transformers`` models on random weights, through the safetensors loader.

Every tensor (BN running statistics, LayerNorm scales, layer scale included) is overwritten with
random values before saving, so a wrong mapping cannot hide behind an init of zeros or ones.
"""

import os

import jax
import numpy as np
import pytest
import safetensors.torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deft_jax.models.backbones import get_backbone, load_pretrained  # noqa: E402
from deft_jax.models.weights import CheckpointMismatchError  # noqa: E402
from deft_jax.tree import flatten  # noqa: E402

NUM_CLASSES = 7
_NOT_MATRICES = ("cls_token", "position_embeddings")


def randomize_(model: "torch.nn.Module", seed: int = 0) -> None:
  """Overwrites every floating tensor of ``model`` (parameters and buffers) with random values."""
  g = torch.Generator().manual_seed(seed)
  new = {}
  for k, t in model.state_dict().items():
    if not t.is_floating_point():
      new[k] = t
    elif k.endswith("running_var"):
      new[k] = torch.rand(t.shape, generator=g) * 1.5 + 0.5
    elif t.ndim >= 2 and not k.endswith(_NOT_MATRICES):
      new[k] = torch.randn(t.shape, generator=g) / np.sqrt(t[0].numel())
    elif k.endswith("weight"):
      new[k] = 1.0 + 0.5 * torch.randn(t.shape, generator=g)
    else:
      new[k] = 0.5 * torch.randn(t.shape, generator=g)
  model.load_state_dict(new)


def images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def to_torch(x: np.ndarray) -> "torch.Tensor":
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def hf_resnet(seed=0):
  cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[2, 1, 1, 1],
                                  layer_type="bottleneck", num_labels=NUM_CLASSES)
  m = transformers.ResNetForImageClassification(cfg)
  randomize_(m, seed)
  return m.eval()


def hf_convnext(seed=0):
  cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[2, 1, 1, 1], num_stages=4,
                                    layer_norm_eps=1e-6, num_labels=NUM_CLASSES)
  m = transformers.ConvNextForImageClassification(cfg)
  randomize_(m, seed)
  return m.eval()


_VIT_CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                image_size=32, patch_size=8, layer_norm_eps=1e-6)
_VIT_OURS = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64)


def hf_vit(seed=0):
  m = transformers.ViTForImageClassification(transformers.ViTConfig(**_VIT_CFG, num_labels=NUM_CLASSES))
  randomize_(m, seed)
  return m.eval()


def hf_vit_mae(seed=0):
  m = transformers.ViTMAEModel(transformers.ViTMAEConfig(**_VIT_CFG, mask_ratio=0.0))
  randomize_(m, seed)
  return m.eval()


def zeros_init(spec, model):
  """Zero variables of the model's shapes: every value here comes from the checkpoint (the head
  too, with keep_head=True), and compiling a real init costs seconds per model on CPU."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), spec.dummy_images(1, model), train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def load(spec_name, model_dir, keep_head=True, **overrides):
  spec = get_backbone(spec_name)
  model = spec.build(NUM_CLASSES, **overrides)
  return model, load_pretrained(spec, zeros_init(spec, model), model_dir, keep_head=keep_head)


def apply(model, variables, x, **kw):
  kw.setdefault("train", False)
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def assert_close(ours, theirs, tol=1e-4):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  print(f"max |ours - torch| = {np.abs(ours - theirs).max():.2e} (max |torch| = {np.abs(theirs).max():.2f})")
  np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol)
  assert np.abs(theirs).max() > 1e-2  # the comparison is not between two near-zero outputs


def test_resnet_logits_match_transformers(tmp_path):
  hf = hf_resnet()
  hf.save_pretrained(tmp_path)
  x = images(64)
  with torch.no_grad():
    want = hf(to_torch(x)).logits.numpy()
  model, variables = load("resnet_tiny", tmp_path, depths=(2, 1, 1, 1))
  assert_close(apply(model, variables, x), want)


def test_resnet_running_stats_and_train_logits_match_torch_after_one_train_forward(tmp_path):
  hf = hf_resnet(seed=3)
  hf.save_pretrained(tmp_path / "before")
  x = images(64, batch=4, seed=1)
  model, variables = load("resnet_tiny", tmp_path / "before", depths=(2, 1, 1, 1))
  hf.train()
  with torch.no_grad():
    want = hf(to_torch(x)).logits.numpy()
  hf.eval().save_pretrained(tmp_path / "after")
  logits, updates = apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert_close(logits, want)
  _, torch_after = load("resnet_tiny", tmp_path / "after", depths=(2, 1, 1, 1))
  ours, theirs = flatten(updates["batch_stats"]), flatten(torch_after["batch_stats"])
  assert sorted(ours) == sorted(theirs)
  for k in ours:
    # unbiased variance in the running average, as torch; a biased one is off by n/(n-1).
    np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-5, err_msg=k)
  before = flatten(variables["batch_stats"])
  assert all(not np.allclose(before[k], ours[k]) for k in ours)


def test_convnext_logits_match_transformers(tmp_path):
  hf = hf_convnext()
  hf.save_pretrained(tmp_path)
  x = images(32)
  with torch.no_grad():
    want = hf(to_torch(x)).logits.numpy()
  model, variables = load("convnext_tiny_test", tmp_path, depths=(2, 1, 1, 1))
  assert_close(apply(model, variables, x), want)


def test_vit_logits_match_transformers(tmp_path):
  hf = hf_vit()
  hf.save_pretrained(tmp_path)
  x = images(32)
  with torch.no_grad():
    want = hf(to_torch(x)).logits.numpy()
  model, variables = load("vit_tiny_test", tmp_path, **_VIT_OURS)
  assert_close(apply(model, variables, x), want)


def test_mae_encoder_matches_transformers_vitmae_in_identity_patch_order(tmp_path):
  # ViTMAEModel keeps ids_shuffle[:, :len_keep] with ids_shuffle = argsort(noise): increasing
  # noise and mask_ratio=0 keep every patch in its original order, so token 0 is the class token.
  hf = hf_vit_mae()
  head = torch.nn.Linear(32, NUM_CLASSES)
  randomize_(head, seed=5)
  state = {**hf.state_dict(), "classifier.weight": head.weight, "classifier.bias": head.bias}
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
  x = images(32)
  noise = torch.arange(16, dtype=torch.float32).expand(2, 16)
  with torch.no_grad():
    out = hf(to_torch(x), noise=noise, output_hidden_states=True)
    want_logits = head(out.last_hidden_state[:, 0]).numpy()
    pre_norm = out.hidden_states[-1]
    want_avg = torch.nn.functional.layer_norm(pre_norm[:, 1:].mean(1), (32,), eps=1e-6).numpy()
  assert torch.equal(out.ids_restore, torch.arange(16).expand(2, 16))

  model, variables = load("mae_vit_tiny_test", tmp_path, pool="token", **_VIT_OURS)
  logits, feats = apply(model, variables, x, return_features=True)
  assert_close(logits, want_logits)
  assert_close(feats, out.last_hidden_state[:, 0].numpy())

  # MAE fine-tuning recipe: patch-token mean + a fresh fc_norm (the checkpoint's final norm dropped).
  spec = get_backbone("mae_vit_tiny_test")
  model = spec.build(NUM_CLASSES, pool="avg", **_VIT_OURS)
  init = zeros_init(spec, model)
  init["params"]["fc_norm"]["scale"] = np.ones(32, np.float32)  # what a fresh init holds
  variables = load_pretrained(spec, init, tmp_path, keep_head=True)
  assert "norm" not in variables["params"]
  np.testing.assert_array_equal(variables["params"]["fc_norm"]["scale"], np.ones(32))
  _, feats = apply(model, variables, x, return_features=True)
  assert_close(feats, want_avg)


def test_sharded_checkpoint_with_index_loads_like_single_file(tmp_path):
  hf = hf_resnet()
  hf.save_pretrained(tmp_path / "one")
  hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  _, a = load("resnet_tiny", tmp_path / "one", depths=(2, 1, 1, 1))
  _, b = load("resnet_tiny", tmp_path / "sharded", depths=(2, 1, 1, 1))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_classifier_is_dropped_by_default_and_head_keeps_its_init(tmp_path):
  hf_vit().save_pretrained(tmp_path)
  spec = get_backbone("vit_tiny_test")
  model = spec.build(3, **_VIT_OURS)
  init = zeros_init(spec, model)
  loaded = load_pretrained(spec, init, tmp_path)
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], init["params"]["head"]["kernel"])
  sd = safetensors.torch.load_file(tmp_path / "model.safetensors")
  np.testing.assert_array_equal(loaded["params"]["cls_token"], sd["vit.embeddings.cls_token"].numpy())
  with pytest.raises(CheckpointMismatchError, match="model has 3 classes, .* has 7"):
    load_pretrained(spec, init, tmp_path, keep_head=True)


def test_unknown_checkpoint_key_is_named(tmp_path):
  sd = {k: v.contiguous() for k, v in hf_convnext().state_dict().items()}
  sd["convnext.encoder.stages.0.layers.0.grn.weight"] = torch.zeros(8)
  safetensors.torch.save_file(sd, tmp_path / "model.safetensors")
  with pytest.raises(CheckpointMismatchError, match=r"convnext\.encoder\.stages\.0\.layers\.0\.grn\.weight"):
    load("convnext_tiny_test", tmp_path, depths=(2, 1, 1, 1))


def test_missing_checkpoint_tensor_is_named_by_model_path(tmp_path):
  sd = {k: v.contiguous() for k, v in hf_resnet().state_dict().items()
        if k != "resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"}
  safetensors.torch.save_file(sd, tmp_path / "model.safetensors")
  with pytest.raises(CheckpointMismatchError, match="stage1_block0/conv2/kernel"):
    load("resnet_tiny", tmp_path, depths=(2, 1, 1, 1))


def test_checkpoint_of_another_family_or_size_is_refused(tmp_path):
  hf_convnext().save_pretrained(tmp_path)
  with pytest.raises(CheckpointMismatchError, match="hf ConvNeXt checkpoint, but backbone 'resnet_tiny'"):
    load("resnet_tiny", tmp_path)
  with pytest.raises(CheckpointMismatchError, match=r"stem_conv/kernel: model expects \(4, 4, 3, 16\)"):
    load("convnext_tiny_test", tmp_path, depths=(2, 1, 1, 1), dims=(16, 16, 32, 64))


def test_pickled_checkpoints_are_refused(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="pickled checkpoints are refused"):
    load("resnet_tiny", tmp_path)
  with pytest.raises(ValueError, match="not a .safetensors file"):
    load("resnet_tiny", tmp_path / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match="no such file"):
    load("resnet_tiny", tmp_path / "missing" / "dir")


def test_file_and_directory_paths_load_identically(tmp_path):
  hf_vit().save_pretrained(tmp_path)  # writes config.json beside model.safetensors
  _, from_file = load("vit_tiny_test", tmp_path / "model.safetensors", **_VIT_OURS)
  _, from_dir = load("vit_tiny_test", tmp_path, **_VIT_OURS)
  jax.tree.map(np.testing.assert_array_equal, from_file, from_dir)


def test_mae_pretraining_checkpoint_loads_encoder_and_drops_decoder_by_name(tmp_path, caplog):
  cfg = transformers.ViTMAEConfig(**_VIT_CFG, decoder_num_hidden_layers=1, decoder_hidden_size=16,
                                  decoder_intermediate_size=32, decoder_num_attention_heads=2)
  pre = transformers.ViTMAEForPreTraining(cfg)
  randomize_(pre, seed=2)
  pre.save_pretrained(tmp_path)  # hub layout of facebook/vit-mae-base: vit.* + decoder.*
  spec = get_backbone("mae_vit_tiny_test")
  model = spec.build(NUM_CLASSES, pool="token", **_VIT_OURS)
  with caplog.at_level("INFO"):
    variables = load_pretrained(spec, zeros_init(spec, model), tmp_path)
  assert "decoder.decoder_pred.weight" in caplog.text and "MAE pretraining decoder" in caplog.text
  sd = pre.vit.state_dict()
  np.testing.assert_array_equal(variables["params"]["norm"]["scale"], sd["layernorm.weight"].numpy())
  np.testing.assert_array_equal(variables["params"]["block1"]["mlp"]["fc2"]["kernel"],
                                sd["layers.1.mlp.fc2.weight"].numpy().T)


def test_hf_config_of_a_different_computation_is_refused(tmp_path):
  # ResNet v1 (stride on the 1x1 conv) has exactly the v1.5 weights; only config.json tells.
  cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[2, 1, 1, 1],
                                  downsample_in_bottleneck=True, num_labels=NUM_CLASSES)
  transformers.ResNetForImageClassification(cfg).save_pretrained(tmp_path)
  with pytest.raises(CheckpointMismatchError, match="downsample_in_bottleneck=True"):
    load("resnet_tiny", tmp_path, depths=(2, 1, 1, 1))
