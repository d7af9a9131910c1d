"""Logits equal timm's own models (random weights, ``pretrained=False``) through the timm mapping.

Runs only where timm and torch are importable (GPU machines usually have both; ``pip install timm``).
The tests run on CPU in fp32 whatever the machine has.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch")
timm = pytest.importorskip("timm", reason="needs timm (not installed on the dev machine; GPU machines have it)")
import safetensors.torch  # noqa: E402

from deft_jax.models.backbones import get_backbone, load_pretrained  # noqa: E402

NUM_CLASSES = 10
_NOT_MATRICES = ("cls_token", "pos_embed")


def randomize_(model, seed=0):
  """Every floating tensor random (BN running stats, norms and layer scale included)."""
  g = torch.Generator().manual_seed(seed)
  new = {}
  for k, t in model.state_dict().items():
    if not t.is_floating_point():
      new[k] = t
    elif k.endswith("running_var"):
      new[k] = torch.rand(t.shape, generator=g) * 1.5 + 0.5
    elif t.ndim >= 2 and not k.endswith(_NOT_MATRICES):
      new[k] = torch.randn(t.shape, generator=g) / np.sqrt(t[0].numel())
    elif k.endswith(("weight", "gamma")):
      new[k] = 1.0 + 0.5 * torch.randn(t.shape, generator=g)
    else:
      new[k] = 0.5 * torch.randn(t.shape, generator=g)
  model.load_state_dict(new)
  return model.eval()


def compare(tmp_path, timm_model, spec_name, size, **overrides):
  randomize_(timm_model)
  path = tmp_path / "model.safetensors"
  safetensors.torch.save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want = timm_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  spec = get_backbone(spec_name)
  model = spec.build(NUM_CLASSES, **overrides)
  # On a GPU machine JAX would default to the GPU, whose fp32 convolutions and matmuls use TF32 (about
  # 1e-3 relative error: a first run on an H100 failed at 1e-4 that way). Compare on the CPU at full precision.
  with jax.default_device(jax.devices("cpu")[0]), jax.default_matmul_precision("highest"):
    init = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False)
    variables = load_pretrained(spec, init, path, keep_head=True)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  scale = float(np.abs(want).max())
  assert scale > 1e-2
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, scale))


def test_resnet50_logits_match_timm(tmp_path):
  compare(tmp_path, timm.create_model("resnet50", pretrained=False, num_classes=NUM_CLASSES), "resnet50", 64)


def test_convnext_tiny_logits_match_timm(tmp_path):
  m = timm.create_model("convnext_tiny", pretrained=False, num_classes=NUM_CLASSES, depths=(1, 1, 1, 1))
  compare(tmp_path, m, "convnext_tiny", 64, depths=(1, 1, 1, 1))


def test_vit_b16_logits_match_timm(tmp_path):
  m = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=NUM_CLASSES)
  compare(tmp_path, m, "vit_b16", 32, image_size=32, depth=2)


def test_mae_vit_b16_global_pool_logits_match_timm(tmp_path):
  m = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=NUM_CLASSES,
                        global_pool="avg")
  compare(tmp_path, m, "mae_vit_b16", 32, image_size=32, depth=2, pool="avg")


def test_mae_vit_b16_token_pool_logits_match_timm(tmp_path):
  # What timm.create_model("vit_base_patch16_224.mae", num_classes=...) builds (global_pool="token").
  m = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=NUM_CLASSES)
  compare(tmp_path, m, "mae_vit_b16", 32, image_size=32, depth=2, pool="token")
