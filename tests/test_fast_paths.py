"""Numerics of the fast paths: remat and scan compute the plain model's function and gradients; bf16 compute
keeps fp32 parameters, fp32 LayerNorm / softmax, and stays close to fp32.

Tiny preset with VPT-deep and LoRA (q, v) so that the PEFT paths run through remat and scan as well; LoRA's B
is made non-zero so that its gradients are not trivially zero. Gradients are taken w.r.t. every parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.models import clip as clip_lib
from deft_jax.models import presets
from deft_jax.models.clip_weights import stack_layers
from deft_jax.models.peft import PEFTConfig
from deft_jax.tree import flatten, unflatten

PEFT = PEFTConfig(vpt="deep", vpt_tokens=3, lora_rank=2, lora_targets=("q", "v"))
B, T = 4, 12

# remat / scan against the plain model, all in fp32: the same operations in a different schedule, so only
# summation-order rounding separates them.
OUT_RTOL, OUT_ATOL = 1e-5, 1e-5
GRAD_RTOL, GRAD_ATOL_REL = 1e-4, 1e-6  # atol relative to the largest gradient of the model
# bf16 compute against fp32 (same fp32 parameters): bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per
# operation), accumulated over ~10 matmuls deep. Measured on three seeds: relative L2 error of the normalised
# embeddings <= 1.3e-2, cosine similarities within 5e-3, cosine of the PEFT gradients 0.9999.
BF16_EMBED_REL = 3e-2  # ||bf16 - fp32|| / ||fp32|| of the image and text embeddings
BF16_COSINE_ABS = 2e-2  # max |cos_bf16 - cos_fp32| of the image-text similarities (logits / logit scale)
BF16_GRAD_COSINE = 0.99  # cosine between the bf16 and fp32 gradients of all PEFT parameters


def _model(**overrides) -> clip_lib.CLIP:
  return clip_lib.CLIP(presets.get_preset("tiny", **overrides), PEFT)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(B, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(1, 1000, size=(B, T)).astype(np.int32)
  eot = rng.integers(3, T, size=B)
  for i, e in enumerate(eot):  # end-of-text (the largest id) then padding, as the tokenizer writes them
    ids[i, e] = 49407
    ids[i, e + 1:] = 0
  return jnp.asarray(images), jnp.asarray(ids)


@pytest.fixture(scope="module")
def params():
  p = clip_lib.init_params(_model(), jax.random.key(0))
  flat = flatten(p)
  rng = np.random.default_rng(1)
  for k in flat:
    if k.endswith("lora_b"):
      flat[k] = jnp.asarray(0.1 * rng.normal(size=flat[k].shape), jnp.float32)
  return unflatten(flat)


def _loss_fn(model, images, ids):
  weights = jax.random.normal(jax.random.key(2), (B, B))

  def loss(p):
    out = model.apply({"params": p}, images, ids)
    return jnp.sum(out["logits_per_image"] * weights) / 100.0, out

  return loss


def _value_and_grads(model, params, inputs):
  (_, out), grads = jax.jit(jax.value_and_grad(_loss_fn(model, *inputs), has_aux=True))(params)
  return out, flatten(grads)


def _assert_grads_close(got: dict, want: dict):
  assert set(got) == set(want)
  # atol relative to the largest gradient anywhere: some gradients are exactly zero in exact arithmetic
  # (e.g. the key bias, which softmax cancels) and are rounding noise of either schedule.
  scale = max(float(np.abs(np.asarray(w)).max()) for w in want.values())
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=GRAD_RTOL, atol=GRAD_ATOL_REL * scale,
                               err_msg=k)


@pytest.fixture(scope="module")
def plain(params, inputs):
  return _value_and_grads(_model(), params, inputs)


def test_plain_model_has_nonzero_gradients_for_every_peft_parameter(plain):
  _, grads = plain
  peft_keys = [k for k in grads if "vpt_prompt" in k or "_lora/" in k]
  assert len(peft_keys) == 2 + 2 * 2 * 2  # 2 vision blocks: a prompt each, LoRA a/b on q and v each
  for k in peft_keys:
    assert np.abs(np.asarray(grads[k])).max() > 0, k


def test_remat_gives_the_same_outputs_and_gradients_as_the_plain_model(params, inputs, plain):
  out, grads = _value_and_grads(_model(remat=True), params, inputs)
  want_out, want_grads = plain
  for k in want_out:
    np.testing.assert_allclose(out[k], want_out[k], rtol=OUT_RTOL, atol=OUT_ATOL, err_msg=k)
  _assert_grads_close(grads, want_grads)


@pytest.mark.parametrize("remat", [False, True], ids=["scan", "scan+remat"])
def test_scan_gives_the_same_outputs_and_gradients_as_the_plain_model(params, inputs, plain, remat):
  model = _model(scan=True, remat=remat)
  stacked = unflatten(stack_layers(flatten(params)))
  # The stacked tree must be exactly what the scanned model initialises (names, shapes).
  init = jax.eval_shape(lambda k: clip_lib.init_params(model, k), jax.random.key(0))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), init) == jax.tree.map(lambda x: (x.shape, x.dtype), stacked)
  out, grads = _value_and_grads(model, stacked, inputs)
  want_out, want_grads = plain
  for k in want_out:
    np.testing.assert_allclose(out[k], want_out[k], rtol=OUT_RTOL, atol=OUT_ATOL, err_msg=k)
  _assert_grads_close(grads, stack_layers(want_grads))


def test_bf16_model_keeps_float32_parameters():
  shapes = jax.eval_shape(lambda k: clip_lib.init_params(_model(dtype="bfloat16"), k), jax.random.key(0))
  dtypes = {k: v.dtype for k, v in flatten(shapes).items()}
  assert all(d == jnp.float32 for d in dtypes.values()), {k: d for k, d in dtypes.items() if d != jnp.float32}


def _eqns(jaxpr):
  """Every equation of a jaxpr, recursing into sub-jaxprs (jit, remat, custom_jvp, scan)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def test_bf16_model_runs_matmuls_in_bf16_and_layernorm_and_softmax_in_fp32(params, inputs):
  model = _model(dtype="bfloat16")
  jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, *inputs))(params).jaxpr
  eqns = list(_eqns(jaxpr))
  dots = [e for e in eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
  fp32 = [e for e in dots if any(v.aval.dtype != jnp.bfloat16 for v in e.invars)]
  # Every matmul / convolution of both towers takes bf16 operands; the one fp32 product is the final
  # cosine-similarity matrix of the (fp32, normalised) features.
  assert len(dots) > 20
  assert [e.outvars[0].aval.shape for e in fp32] == [(B, B)]
  # LayerNorm's 1/sqrt(var + eps) and softmax's exp: float32 only.
  for name in ("rsqrt", "exp"):
    found = [e for e in eqns if e.primitive.name == name]
    assert found, name
    assert all(v.aval.dtype == jnp.float32 for e in found for v in e.invars), name
  out = model.apply({"params": params}, *inputs)
  assert all(v.dtype == jnp.float32 for v in out.values())


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bf16_compute_stays_close_to_fp32(params, inputs, plain):
  out, grads = _value_and_grads(_model(dtype="bfloat16"), params, inputs)
  want_out, want_grads = plain
  assert _rel(out["image_embeds"], want_out["image_embeds"]) < BF16_EMBED_REL
  assert _rel(out["text_embeds"], want_out["text_embeds"]) < BF16_EMBED_REL
  scale = float(np.exp(params["logit_scale"]))
  cos_err = np.abs(np.asarray(out["logits_per_image"]) - np.asarray(want_out["logits_per_image"])).max() / scale
  assert cos_err < BF16_COSINE_ABS
  assert all(np.asarray(g).dtype == np.float32 for g in grads.values())
  peft = sorted(k for k in grads if "vpt_prompt" in k or "_lora/" in k)
  g = np.concatenate([np.ravel(grads[k]) for k in peft])
  w = np.concatenate([np.ravel(want_grads[k]) for k in peft])
  assert float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w))) > BF16_GRAD_COSINE


def test_bf16_train_step_keeps_params_and_optimizer_state_float32():
  from benchmarks import common, jax_steps

  cfg = common.BenchConfig(framework="jax", step="phase1_vpt_deep", model="tiny", batch=4, dtype="bfloat16",
                           num_classes=5, n_ctx=4, vpt_tokens=3)
  built = jax_steps.build(cfg)
  state, metrics = built.step(built.state, built.batch)
  assert np.isfinite(float(metrics["loss"]))
  floats = [x for x in jax.tree.leaves((state["params"], state["opt_state"]))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
