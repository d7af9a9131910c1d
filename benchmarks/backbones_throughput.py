"""Train-step throughput of the phase-2 backbones: one JSON line per backbone.

A step is forward + backward + an SGD (momentum 0.9) update, jitted with the train state donated,
timed after warm-up with ``block_until_ready``. ResNet steps also update batch-norm statistics.
Runs on one device (the first); sharded throughput belongs to the adaptation stage's harness.

  python benchmarks/backbones_throughput.py                                   # 224 px, batch 64
  python benchmarks/backbones_throughput.py --batch 8 --steps 3 --backbones resnet50,vit_b16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
from deft_jax.models.backbones import get_backbone  # noqa: E402

DEFAULT_BACKBONES = "resnet50,convnext_tiny,vit_b16,mae_vit_b16"


def make_train_step(model, has_batch_stats: bool, tx: optax.GradientTransformation):
  """``(state, images, labels) -> (state, loss)`` with ``state`` donated."""

  def step(state, images, labels):
    def loss_fn(params):
      variables = {"params": params}
      if has_batch_stats:
        variables["batch_stats"] = state["batch_stats"]
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
      else:
        logits, updates = model.apply(variables, images, train=True), {}
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    deltas, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], deltas), "opt_state": opt_state}
    if has_batch_stats:
      new["batch_stats"] = updates["batch_stats"]
    return new, loss

  return jax.jit(step, donate_argnums=(0,))


def bench(name: str, batch: int, image_size: int, dtype, steps: int, warmup: int, num_classes: int,
          attention_impl: str | None) -> dict:
  spec = get_backbone(name)
  overrides = {}
  if spec.family == "vit":
    overrides["image_size"] = image_size
    if attention_impl:
      overrides["attention_impl"] = attention_impl
  model = spec.build(num_classes, dtype=dtype, **overrides)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, image_size, image_size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, size=(batch,)), jnp.int32)

  t0 = time.perf_counter()
  variables = jax.jit(lambda r: model.init(r, images[:1], train=False))(jax.random.key(0))
  jax.block_until_ready(variables)
  init_s = time.perf_counter() - t0
  tx = optax.sgd(1e-3, momentum=0.9)
  state = {"params": variables["params"], "opt_state": tx.init(variables["params"])}
  if spec.has_batch_stats:
    state["batch_stats"] = variables["batch_stats"]

  step = make_train_step(model, spec.has_batch_stats, tx)
  t0 = time.perf_counter()
  compiled = step.lower(state, images, labels).compile()
  compile_s = time.perf_counter() - t0

  def one_step():
    nonlocal state
    state, loss = compiled(state, images, labels)
    return loss

  times, loss = common.time_steps(one_step, jax.block_until_ready, warmup=warmup, iters=steps)
  step_s = statistics.median(times)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{name}: non-finite loss {float(loss)}")
  dev = jax.devices()[0]
  return {
      "backbone": name, "platform": dev.platform, "device": dev.device_kind, "batch": batch,
      "image_size": image_size, "dtype": jnp.dtype(dtype).name,
      "params_m": round(sum(x.size for x in jax.tree.leaves(variables["params"])) / 1e6, 2),
      "init_s": round(init_s, 1), "compile_s": round(compile_s, 1), "step_ms": round(step_s * 1e3, 1),
      "images_per_s": round(batch / step_s, 2), "steps": steps, "warmup": warmup,
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--backbones", default=DEFAULT_BACKBONES, help="comma-separated registry names")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num_classes", type=int, default=1000)
  p.add_argument("--attention_impl", default=None, choices=[None, "xla", "cudnn"],
                 help="ViT attention backend for jax.nn.dot_product_attention")
  args = p.parse_args(argv)
  if args.dtype == "auto":
    dtype = jnp.float32 if jax.devices()[0].platform == "cpu" else jnp.bfloat16
  else:
    dtype = jnp.dtype(args.dtype)
  for name in args.backbones.split(","):
    result = bench(name.strip(), args.batch, args.image_size, dtype, args.steps, args.warmup,
                   args.num_classes, args.attention_impl)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
