"""Train-step throughput of the phase-2 backbones: one JSON line per backbone.

A step is the product's own phase-2 step (deft_jax.classify.trainer.Trainer over the backbone's Classifier,
classify/backbone.py): forward + backward + the update of the backbone's reference optimiser, as ``adapt.method
= "fft"`` with ``adapt.backbone = <name>`` runs it, jitted with the train state donated, timed after warm-up
with ``block_until_ready``. ResNet steps also update batch-norm statistics. Random weights. Runs on one device
(the first); sharded throughput belongs to the harness.

  python -m benchmarks.backbones_throughput                                   # 224 px, batch 64
  python -m benchmarks.backbones_throughput --batch 8 --steps 3 --backbones resnet50,vit_b16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from deft_jax import config_lib, parallel
from deft_jax.classify import backbone as backbone_lib
from deft_jax.classify import trainer as trainer_lib
from deft_jax.data.config import ImageSpec

DEFAULT_BACKBONES = "resnet50,convnext_tiny,vit_b16,mae_vit_b16"


def bench(name: str, batch: int, image_size: int, dtype, steps: int, warmup: int, num_classes: int,
          attention_impl: str | None) -> dict:
  mesh = parallel.make_mesh([("data", 1)], jax.devices()[:1])
  a = config_lib.base_config().adapt
  t0 = time.perf_counter()
  clf = backbone_lib.backbone_classifier(
      name, num_classes=num_classes, mesh=mesh, rng=jax.random.key(0), inputs=ImageSpec(image_size, (), ()),
      checkpoint="none", dtype=jnp.dtype(dtype).name, attention_impl=attention_impl)
  settings = trainer_lib.make_settings(a.loss, a.loss_params, steps_per_epoch=1)
  tr = trainer_lib.Trainer(clf, optim_cfg=a.optim, schedule_cfg=a.schedule, settings=settings,
                           total_steps=warmup + steps + 1, steps_per_epoch=1, mesh=mesh)
  state = tr.init_state(jax.random.key(1), num_examples=batch, num_classes=num_classes)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  size = clf.inputs.image_size
  batch_arrays = parallel.shard_batch({
      "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, num_classes, size=(batch,)).astype(np.int32),
      "index": np.arange(batch, dtype=np.int32), "mask": np.ones(batch, bool)}, mesh)
  step = tr.jit_train_step(state)
  t0 = time.perf_counter()
  state, metrics = step(state, batch_arrays)  # the first call compiles
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0

  def one_step():
    nonlocal state
    state, m = step(state, batch_arrays)
    return m["loss"]

  times, loss = common.time_steps(one_step, jax.block_until_ready, warmup=warmup, iters=steps)
  step_s = statistics.median(times)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{name}: non-finite loss {float(loss)}")
  dev = jax.devices()[0]
  return {
      "backbone": name, "platform": dev.platform, "device": dev.device_kind, "batch": batch,
      "image_size": size, "dtype": jnp.dtype(dtype).name, "optimizer": tr.optim_cfg["name"],
      "params_m": round(sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6, 2),
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
