"""Times one deft_jax configuration (see jax_steps.py) and returns its JSON record.

compile_s is ``lower`` + ``compile`` of the jitted step (XLA's autotuning included). ``xla_flops`` is the
compiled executable's ``cost_analysis()["flops"]``: every floating-point operation XLA counts (element-wise
work and rematerialised forward passes included, custom calls such as cuDNN attention excluded).
``lowered_matmul_flops`` counts the matmuls / convolutions of the lowered StableHLO with flops.py's
convention: equal to ``model_flops`` when the analytic count describes exactly what JAX emitted (no remat:
recomputation adds to it; cuDNN attention: its custom call is missing from it; scan: null).
Peak memory is the device allocator's high-water mark for the process (the harness gives each group of batch
sizes its own process and runs them in ascending order).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, flops, jax_steps


def device_name() -> str:
  d = jax.devices()[0]
  return d.device_kind if d.platform != "cpu" else (d.device_kind or "cpu")


def calibrate(dtype: str, n: int = 8192, iters: int = 20) -> float | None:
  """Measured matmul TFLOP/s of the device (an n^3 product on random data); None on CPU."""
  if jax.devices()[0].platform == "cpu":
    return None
  dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dt)
  b = jax.random.normal(kb, (n, n), dt)
  f = jax.jit(lambda x, y: x @ y)
  times, _ = common.time_steps(lambda: f(a, b), jax.block_until_ready, warmup=3, iters=iters)
  times.sort()
  return 2.0 * n ** 3 / times[len(times) // 2] / 1e12


def cost_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - backend-dependent and optional
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def peak_memory() -> int | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run(cfg: common.BenchConfig, measured_peak: float | None = None) -> dict:
  """Measures ``cfg``; a failing cuDNN attention request is retried with XLA attention and recorded."""
  try:
    return _run(cfg, measured_peak)
  except Exception as e:  # noqa: BLE001
    if cfg.attention != "cudnn" or common.is_oom(e):
      raise
    reason = f"{type(e).__name__}: {e}".strip()[:500]
  gc.collect()
  rec = _run(dataclasses.replace(cfg, attention="xla"), measured_peak)
  rec.update(attention_requested="cudnn", fallback=reason, variant="cudnn->" + rec["variant"])
  return rec


def _run(cfg: common.BenchConfig, measured_peak: float | None) -> dict:
  rec = common.base_record(cfg)
  t0 = time.perf_counter()
  built = jax_steps.build(cfg)
  jax.block_until_ready(built.state)
  rec["init_s"] = time.perf_counter() - t0
  rec["image_size"] = built.config.vision.image_size
  t0 = time.perf_counter()
  lowered = built.step.lower(built.state, built.batch)
  compiled = lowered.compile()
  rec["compile_s"] = time.perf_counter() - t0
  xla_flops = cost_flops(compiled)
  try:
    lowered_flops = flops.lowered_matmul_flops(lowered.as_text())
  except ValueError:  # scan: loop bodies cannot be counted from the text
    lowered_flops = None
  del lowered

  state, batch = built.state, built.batch
  built.state = None  # donated by the first step

  def one_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return metrics

  t0 = time.perf_counter()
  jax.block_until_ready(one_step())
  rec["first_step_s"] = time.perf_counter() - t0
  times, metrics = common.time_steps(one_step, jax.block_until_ready, warmup=max(cfg.warmup - 1, 0),
                                     iters=cfg.iters)
  loss = float(metrics["loss"])
  rec["loss"] = loss
  if not np.isfinite(loss):
    rec["warning"] = f"non-finite loss {loss}"
  if cfg.profile_dir:
    rec["profile"] = common.safe_profile(lambda: _profile(one_step, cfg))

  ops = flops.step_products(cfg.step, built.config, batch=cfg.batch, num_classes=cfg.num_classes,
                            text_len=built.text_len, vpt_tokens=cfg.vpt_tokens, lora_rank=cfg.lora_rank,
                            text=built.text)
  name = device_name()
  common.add_throughput(rec, times, batch=cfg.batch, model_flops=flops.total(ops),
                        model_flops_3x=flops.total_3x(ops), device=name, dtype=cfg.dtype,
                        measured_peak=measured_peak)
  rec["xla_flops"] = xla_flops
  rec["lowered_matmul_flops"] = lowered_flops
  rec["lowered_matmul_flops_ratio"] = lowered_flops / rec["model_flops"] if lowered_flops else None
  rec["xla_flops_ratio"] = xla_flops / rec["model_flops"] if xla_flops else None
  rec["text_len"] = built.text_len or None
  if built.text is not None:  # tokens per context through the text tower: shared prefix + padded suffixes
    rec["text_prefix_len"] = built.text.prefix
    rec["text_tokens"] = (built.text.prefix + sum(n * s for n, s in built.text.buckets) if built.text.prefix
                          else built.text.length * cfg.num_classes)
  rec["peak_memory_bytes"] = peak_memory()
  dev = jax.devices()[0]
  rec["device"] = name
  rec["platform"] = dev.platform
  rec["versions"] = common.versions(("jax", "jaxlib", "flax", "optax", "numpy", "jax-cuda13-plugin",
                                     "jax-cuda12-plugin"))
  try:
    rec["versions"]["platform_version"] = dev.client.platform_version
  except Exception:  # noqa: BLE001
    pass
  del state, batch, compiled, built
  gc.collect()
  return rec


def _profile(one_step, cfg) -> dict:
  """A jax.profiler trace (with a Perfetto JSON) of three steps, summarised (see profile_summary.py)."""
  from benchmarks import profile_summary

  out = os.path.join(cfg.profile_dir, cfg.name())
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for _ in range(3):
      m = one_step()
    jax.block_until_ready(m)
  path = profile_summary.find_trace(out)
  if path is None:
    return {"error": f"no perfetto_trace.json.gz under {out}"}
  summary = profile_summary.summarize_file(path, steps=3)
  summary["trace"] = path
  return summary


def cleanup():
  # A failed configuration's arrays live on in its traceback's frames until collected.
  gc.collect()
