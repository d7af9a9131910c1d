"""Phase-2 FFT train-step throughput (images/s) over a data-parallel mesh of every local device.

The step is the product's own (benchmarks/jax_steps.py builds the adapt Trainer's state and jitted step on the
reference FFT classifier from the product's config), on synthetic images resident on the devices (this measures
the model, not the input pipeline); timed with benchmarks.common.time_steps after warm-up; prints one JSON line.
Random weights (the speed does not depend on them). Imports neither TensorFlow nor CLU.

  PYTHONPATH=. python benchmarks/fft_throughput.py                     # ViT-B/16, 224 px, batch 64
  PYTHONPATH=. python benchmarks/fft_throughput.py --batch 4 --steps 3 # a CPU smoke run
  PYTHONPATH=. python benchmarks/fft_throughput.py --dtype bfloat16 --attention cudnn --trainable all
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from benchmarks import common, jax_steps
from deft_jax import parallel
from deft_jax.tree import flatten


def bench(preset: str, batch: int, steps: int, warmup: int, num_classes: int, dtype: str, attention, remat: bool,
          trainable: str) -> dict:
  mesh = parallel.make_mesh([("data", -1)])
  if batch % mesh.size:
    raise ValueError(f"--batch {batch} must be a multiple of the {mesh.size} devices")
  cfg = common.BenchConfig(framework="jax", step="phase2_fft", model=preset, batch=batch, dtype=dtype,
                           attention=attention or "xla", remat=remat, num_classes=num_classes)
  t0 = time.perf_counter()
  built = jax_steps.build_phase2_fft(cfg, mesh=mesh, trainable=trainable)
  jax.block_until_ready(built.state)
  init_s = time.perf_counter() - t0
  params = flatten(built.state["params"])
  n_params = sum(x.size for x in params.values())
  t0 = time.perf_counter()
  compiled = built.step.lower(built.state, built.batch).compile()
  compile_s = time.perf_counter() - t0
  flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # cost analysis is optional and backend-dependent
    pass
  state, batch_arrays = built.state, built.batch

  def one_step():
    nonlocal state
    state, metrics = compiled(state, batch_arrays)
    return metrics

  times, metrics = common.time_steps(one_step, jax.block_until_ready, warmup=warmup, iters=steps)
  step_s = statistics.median(times)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  dev = jax.devices()[0]
  return {
      "benchmark": "fft_train_step", "preset": preset, "trainable": trainable, "platform": dev.platform,
      "device": dev.device_kind, "devices": mesh.size, "batch": batch, "image_size": built.config.vision.image_size,
      "dtype": dtype, "attention": attention, "remat": remat, "params_m": round(n_params / 1e6, 2),
      "init_s": round(init_s, 1), "compile_s": round(compile_s, 1), "step_ms": round(step_s * 1e3, 1),
      "images_per_s": round(batch / step_s, 2),
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
