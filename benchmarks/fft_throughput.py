"""Phase-2 FFT train-step throughput (images/s): the real adapt step on a CLIP image encoder + linear head.

The step is deft_jax.adapt's own (adapt/step.py, with the optimiser deft_jax.optim builds from the FFT rules:
SGD momentum 0.9, weight decay, CE), jitted with the state donated, over a data-parallel mesh of all local
devices, on synthetic images resident on the device (this measures the model, not the input pipeline). Timed
after warm-up with block_until_ready; prints one JSON line. Random weights (the speed does not depend on them).
Imports neither TensorFlow, clu nor ml_collections, so it runs on a bare JAX GPU machine.

  python benchmarks/fft_throughput.py                                  # ViT-B/16, 224 px, batch 64
  python benchmarks/fft_throughput.py --batch 4 --steps 3              # a CPU smoke run
  python benchmarks/fft_throughput.py --dtype bfloat16 --attention cudnn --trainable all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from deft_jax import optim, parallel  # noqa: E402
from deft_jax.adapt import classifier as clf_lib  # noqa: E402
from deft_jax.adapt import step as step_lib  # noqa: E402


def bench(preset: str, batch: int, steps: int, warmup: int, num_classes: int, dtype: str, attention, remat: bool,
          trainable: str) -> dict:
  mesh = parallel.make_mesh([("data", -1)])
  if batch % mesh.size:
    raise ValueError(f"--batch {batch} must be a multiple of the {mesh.size} devices")
  model_cfg = dict(preset=preset, checkpoint="", dtype=dtype, attention=attention, remat=remat, scan=False)
  t0 = time.perf_counter()
  clf = clf_lib.clip_classifier(model_cfg, num_classes=num_classes, mesh=mesh, rng=jax.random.key(0),
                                checkpoint=None, trainable=trainable)
  jax.block_until_ready(clf.variables)
  init_s = time.perf_counter() - t0
  params = clf.variables["params"]
  tx, schedules = optim.make_optimizer(params, clf.rules, optim=dict(name="sgd", momentum=0.9, weight_decay=5e-4),
                                       schedule=dict(lr=5e-4, decay="cosine", per_epoch=True), total_steps=1000,
                                       steps_per_epoch=100)
  mask = optim.trainable_mask(params, clf.rules)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_train = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
  state = {"step": np.int32(0), "rng": jax.random.key_data(jax.random.key(1)), "params": params, "extra": {},
           "opt_state": tx.init(params)}
  sh = parallel.shardings_for(state, mesh)
  state = jax.device_put(state, sh)
  rng = np.random.default_rng(0)
  size = clf.image_size
  batch_arrays = parallel.shard_batch({
      "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      "index": np.arange(batch, dtype=np.int32), "label": rng.integers(0, num_classes, batch).astype(np.int32),
      "clean_label": np.full(batch, -1, np.int32), "mask": np.ones(batch, bool)}, mesh)
  fn = step_lib.make_train_step(clf.apply, tx, mask, step_lib.StepSettings(steps_per_epoch=100),
                                next(iter(schedules.values())))
  step = jax.jit(fn, in_shardings=(sh, parallel.batch_sharding(mesh)), out_shardings=(sh, parallel.replicated(mesh)),
                 donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch_arrays).compile()
  compile_s = time.perf_counter() - t0
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional and backend-dependent
    pass
  for _ in range(warmup):
    state, metrics = compiled(state, batch_arrays)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch_arrays)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  dev = jax.devices()[0]
  return {
      "benchmark": "fft_train_step", "preset": preset, "trainable": trainable, "platform": dev.platform,
      "device": dev.device_kind, "devices": mesh.size, "batch": batch, "image_size": size, "dtype": dtype,
      "attention": attention, "remat": remat, "params_m": round(n_params / 1e6, 2),
      "trainable_m": round(n_train / 1e6, 2), "init_s": round(init_s, 1), "compile_s": round(compile_s, 1),
      "step_ms": round(step_s * 1e3, 1), "images_per_s": round(batch / step_s, 2),
      "tflops_per_s": round(flops / step_s / 1e12, 2) if flops else None, "steps": steps, "warmup": warmup,
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="vit_b16", help="CLIP preset (deft_jax.models.presets)")
  p.add_argument("--batch", type=int, default=64, help="global batch")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--num_classes", type=int, default=100)
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--attention", default=None, choices=[None, "xla", "cudnn"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--trainable", default="blocks", choices=["blocks", "all"])
  args = p.parse_args(argv)
  dtype = args.dtype
  if dtype == "auto":
    dtype = "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"
  print(json.dumps(bench(args.preset, args.batch, args.steps, args.warmup, args.num_classes, dtype,
                         args.attention, args.remat, args.trainable)), flush=True)


if __name__ == "__main__":
  main()
