"""Backbone behaviour that needs no reference model: registry data, batch-norm state handling in a
train step, stochastic depth, compute dtype, features. Numerical parity: test_backbones_hf_parity.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.models.backbones import BACKBONES, OptimizerSpec, get_backbone
from deft_jax.models.backbones.common import DropPath, drop_path_rates

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def apply(model, variables, x, **kw):
  """Jitted apply: op-by-op dispatch of a whole network compiles every primitive separately."""
  kw.setdefault("train", False)
  rngs = kw.pop("rngs", None)
  f = jax.jit(lambda v, x, r: model.apply(v, x, rngs=r, **kw))
  return f(variables, x, rngs)


def _images(spec, batch=4, seed=0):
  s = spec.image_size
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, s, s, 3)), jnp.float32)


def random_variables(spec, model, seed=0):
  """Random variables of the model's shapes, filled on the host.

  Unlike a fresh init, nothing is zero or 1e-6 (zero heads, zero-init last BN scale, layer scale)
  that could hide a dropped branch or a frozen gradient; and compiling ``init`` costs seconds
  per model on CPU.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), spec.dummy_images(1, model), train=False))

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)
    if name in ("scale", "gamma"):
      return (1 + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, size=s.shape).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_registry_has_reference_preprocessing_and_optimisers():
  want = {
      "resnet50": (IMAGENET, OptimizerSpec("adamw", 1e-3, 1e-5, decoupled_weight_decay=True),
                   "timm/resnet50.a1_in1k"),
      "convnext_tiny": (IMAGENET, OptimizerSpec("adamw", 1e-4, 1e-4, decoupled_weight_decay=True),
                        "timm/convnext_tiny.fb_in1k"),
      "vit_b16": (((0.5,) * 3, (0.5,) * 3), OptimizerSpec("sgd", 1e-2, 1e-5, momentum=0.0),
                  "timm/vit_base_patch16_224.augreg_in1k"),
      "mae_vit_b16": (IMAGENET, OptimizerSpec("adamw", 1e-4, 1e-3, decoupled_weight_decay=True),
                      "timm/vit_base_patch16_224.mae"),
  }
  for name, ((mean, std), opt, ckpt) in want.items():
    spec = get_backbone(name)
    assert (spec.image_size, spec.mean, spec.std, spec.optimizer) == (224, mean, std, opt), name
    assert spec.checkpoints[0] == ckpt
  assert [n for n, s in BACKBONES.items() if s.has_batch_stats] == ["resnet50", "resnet_tiny"]


def test_full_size_presets_have_the_published_parameter_counts():
  counts = {"resnet50": 25_557_032, "convnext_tiny": 28_589_128, "vit_b16": 86_567_656}  # 1000 classes
  for name, want in counts.items():
    spec = get_backbone(name)
    model = spec.build(1000)
    shapes = jax.eval_shape(lambda m=model, s=spec: m.init(jax.random.key(0), s.dummy_images(), train=False))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == want, name


def test_bad_names_and_options_are_rejected_with_the_known_ones():
  with pytest.raises(ValueError, match="unknown backbone 'resnet18'.*resnet50"):
    get_backbone("resnet18")
  with pytest.raises(ValueError, match=r"unknown model option\(s\) \['pooling'\].*'pool'"):
    get_backbone("vit_b16").build(10, pooling="avg")
  spec = get_backbone("vit_tiny_test")
  model = spec.build(3)
  variables = spec.init(model, jax.random.key(0))
  with pytest.raises(ValueError, match="built for 32x32 images.*got 64x64"):
    model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=False)
  with pytest.raises(ValueError, match=r"NHWC images with 3 channels, got shape \(1, 3, 32, 32\)"):
    model.apply(variables, jnp.zeros((1, 3, 32, 32)), train=False)
  with pytest.raises(ValueError, match="pool must be 'token' or 'avg'"):
    spec.build(3, pool="map").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_resnet50_train_step_updates_batch_stats_and_eval_does_not():
  spec = get_backbone("resnet50")
  model = spec.build(5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jnp.array([0, 1, 2, 3])
  variables = random_variables(spec, model)

  @jax.jit
  def train_step(params, batch_stats, x, labels):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
      onehot = jax.nn.one_hot(labels, 5)
      return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return params, new_stats, loss

  params, stats, loss = train_step(variables["params"], variables["batch_stats"], x, labels)
  assert np.isfinite(loss)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], stats)
  assert all(jax.tree.leaves(changed))  # every BN layer's running mean and var moved
  assert not np.allclose(params["stage0_block0"]["conv1"]["kernel"],
                         variables["params"]["stage0_block0"]["conv1"]["kernel"])

  state = {"params": params, "batch_stats": stats}
  eval_logits, eval_updates = apply(model, state, x, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], stats)
  # Eval normalises with the running statistics, not the batch's: different logits from a train pass.
  train_logits, _ = apply(model, state, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(eval_logits, train_logits, atol=1e-3)
  # A train pass whose statistics could not be written back fails loudly instead of dropping them.
  with pytest.raises(Exception, match="batch_stats"):
    model.apply(state, x, train=True)


def test_drop_path_needs_an_rng_only_when_training_with_a_positive_rate():
  spec = get_backbone("convnext_tiny_test")
  x = _images(spec)
  plain = spec.build(4)
  variables = random_variables(spec, plain)
  dropped = spec.build(4, drop_path_rate=0.5)
  want = apply(plain, variables, x)
  np.testing.assert_array_equal(apply(dropped, variables, x), want)  # inactive in eval
  apply(plain, variables, x, train=True)  # rate 0: no rng needed
  with pytest.raises(Exception, match="dropout"):
    apply(dropped, variables, x, train=True)
  a = apply(dropped, variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  b = apply(dropped, variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)


def test_drop_path_drops_whole_examples_and_rescales_the_rest():
  x = jnp.ones((4000, 3, 5))
  y = np.asarray(DropPath(0.25).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
  per_example = y.reshape(4000, -1)
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
  np.testing.assert_array_equal(per_example.min(1), per_example.max(1))
  assert abs((per_example[:, 0] > 0).mean() - 0.75) < 0.03
  np.testing.assert_allclose(drop_path_rates(0.3, [2, 2]), [[0.0, 0.1], [0.2, 0.3]])


@pytest.mark.parametrize("name", ["resnet_tiny", "convnext_tiny_test", "vit_tiny_test", "mae_vit_tiny_test"])
def test_bf16_compute_keeps_fp32_params_and_logits_close_to_fp32(name):
  spec = get_backbone(name)
  x = _images(spec, batch=2)
  m32, m16 = spec.build(6), spec.build(6, dtype=jnp.bfloat16)
  variables = random_variables(spec, m32)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(jax.eval_shape(
      lambda: m16.init(jax.random.key(0), spec.dummy_images(), train=False))))
  want = apply(m32, variables, x)
  got = apply(m16, variables, x)
  assert got.dtype == jnp.float32
  scale = float(jnp.abs(want).max())
  assert scale > 1e-2 and float(jnp.abs(got - want).max()) < 0.05 * scale
  hlo = jax.jit(lambda v, x: m16.apply(v, x, train=False)).lower(variables, x).as_text()
  assert "bf16" in hlo and not np.array_equal(got, want)


@pytest.mark.parametrize("name", ["resnet_tiny", "convnext_tiny_test", "vit_tiny_test", "mae_vit_tiny_test"])
def test_features_are_what_the_head_sees(name):
  spec = get_backbone(name)
  model = spec.build(6)
  variables = random_variables(spec, model)
  logits, feats = apply(model, variables, _images(spec, batch=2), return_features=True)
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
  assert feats.dtype == jnp.float32 and feats.shape[0] == 2


def test_specs_are_immutable_plain_data():
  spec = get_backbone("resnet50")
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.image_size = 128
  assert dataclasses.asdict(spec.optimizer) == {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 1e-5,
                                                "momentum": 0.0, "decoupled_weight_decay": True}
