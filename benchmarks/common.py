"""What the JAX and PyTorch workers share: the configuration record, device peaks, timing, error records.

This module imports neither jax nor torch, so that a torch worker never initialises JAX's GPU client (which
would reserve most of the GPU memory) and the reverse.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import statistics
import time
import traceback
from typing import Callable, Optional

STEPS = ("phase2_fft", "phase1_vpt_deep", "phase1_lora")
FRAMEWORKS = ("jax", "torch")

# Dense (no sparsity) tensor-core peaks in TFLOP/s, from NVIDIA's data sheets: bf16 and the TF32 rate that
# float32 matmuls run at (JAX's default precision and torch with allow_tf32). Matched against the device name
# in this order; an unknown device gets MFU null rather than a guess.
PEAK_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100 80GB HBM3", {"bfloat16": 989.4, "float32": 494.7}),  # SXM5
    ("H100 SXM", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
)

# CIFAR-100's classes: phase 1 runs the text tower over 2C prompts built from them (C = 100).
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
assert len(CIFAR100_CLASSES) == 100


def class_names(num_classes: int) -> list[str]:
  """CIFAR-100's names, cycled with a suffix when more classes are asked for."""
  return [CIFAR100_CLASSES[i % 100] + ("" if i < 100 else f" {i // 100}") for i in range(num_classes)]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One measured configuration (one JSON line)."""

  framework: str
  step: str
  model: str
  batch: int
  dtype: str = "bfloat16"
  image_size: int = 0  # 0: the preset's
  attention: str = "xla"  # jax: xla | cudnn; torch: sdpa
  remat: bool = False
  scan: bool = False
  torch_compile: bool = False
  num_classes: int = 100
  n_ctx: int = 16
  vpt_tokens: int = 20
  lora_rank: int = 8
  # deft_jax phase 1: the prompts' shared prefix once per context (detect.text_prefix_sharing), class chunks.
  text_prefix_sharing: bool = True
  text_chunk: int = 0
  warmup: int = 3
  iters: int = 10
  profile_dir: str = ""
  torch_flop_count: bool = True

  def group_key(self) -> tuple:
    """Configurations that differ only in batch size share a worker process."""
    d = dataclasses.asdict(self)
    d.pop("batch")
    d.pop("profile_dir")
    return tuple(sorted(d.items()))

  @property
  def variant(self) -> str:
    if self.framework == "torch":
      return "compile" if self.torch_compile else "eager"
    return self.attention + ("+remat" if self.remat else "") + ("+scan" if self.scan else "")

  def name(self) -> str:
    return f"{self.framework}_{self.step}_{self.model}_{self.dtype}_{self.variant}_b{self.batch}".replace("+", "-")


def base_record(cfg: BenchConfig) -> dict:
  rec = {k: getattr(cfg, k) for k in ("framework", "step", "model", "image_size", "batch", "dtype", "attention",
                                      "remat", "scan", "num_classes")}
  rec["variant"] = cfg.variant
  rec["torch_compile"] = cfg.torch_compile if cfg.framework == "torch" else None
  if cfg.step.startswith("phase1"):
    rec["n_ctx"] = cfg.n_ctx
    rec["vpt_tokens"] = cfg.vpt_tokens if cfg.step == "phase1_vpt_deep" else 0
    rec["lora_rank"] = cfg.lora_rank if cfg.step == "phase1_lora" else 0
    if cfg.framework == "jax":
      rec["text_prefix_sharing"], rec["text_chunk"] = cfg.text_prefix_sharing, cfg.text_chunk
  return rec


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_name.lower():
      return peaks.get(dtype)
  return None


def versions(names=("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")) -> dict:
  out = {"python": platform.python_version()}
  for n in names:
    try:
      out[n] = importlib.metadata.version(n)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def time_steps(run_step: Callable[[], object], sync: Callable[[object], None], *, warmup: int,
               iters: int) -> tuple[list[float], object]:
  """Runs ``warmup`` then ``iters`` steps, each synchronised, and returns the timed durations (seconds)."""
  out = None
  for _ in range(warmup):
    out = run_step()
    sync(out)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    out = run_step()
    sync(out)
    times.append(time.perf_counter() - t0)
  return times, out


def add_throughput(rec: dict, times: list[float], *, batch: int, model_flops: float, model_flops_3x: float,
                   device: str, dtype: str, measured_peak: Optional[float] = None) -> dict:
  """Images/s, step time statistics, achieved TFLOP/s and MFU (model FLOPs over the data-sheet peak)."""
  med = statistics.median(times)
  peak = peak_tflops(device, dtype)
  achieved = model_flops / med / 1e12
  rec.update({
      "step_time_s": med, "step_time_mean_s": statistics.fmean(times), "step_time_min_s": min(times),
      "step_time_max_s": max(times), "timed_steps": len(times), "images_per_s": batch / med,
      "model_flops": model_flops, "model_flops_3x": model_flops_3x, "achieved_tflops": achieved,
      "peak_tflops": peak, "mfu": achieved / peak if peak else None,
      "mfu_3x": model_flops_3x / med / 1e12 / peak if peak else None,
      "measured_peak_tflops": measured_peak,
      "mfu_vs_measured_peak": achieved / measured_peak if measured_peak else None,
  })
  return rec


def is_oom(exc: BaseException) -> bool:
  text = f"{type(exc).__name__} {exc}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory", "oom when allocating"))


def safe_profile(fn) -> dict:
  """Runs ``fn`` (a profiling step); a profiler failure (no CUPTI, ...) must not cost the measurement, an OOM
  still propagates."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001
    if is_oom(e):
      raise
    return {"error": f"{type(e).__name__}: {e}"[:500]}


def error_record(cfg: BenchConfig, exc: BaseException | str, kind: Optional[str] = None) -> dict:
  rec = base_record(cfg)
  if isinstance(exc, BaseException):
    kind = kind or ("oom" if is_oom(exc) else "error")
    msg = f"{type(exc).__name__}: {exc}"
    rec["traceback_tail"] = "".join(traceback.format_exception(exc))[-1500:]
  else:
    msg = exc
  rec["error"] = msg.strip()[:800]
  rec["error_kind"] = kind or "error"
  return rec
