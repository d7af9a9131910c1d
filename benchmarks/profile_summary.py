"""Summarises a profiler trace into where the device time goes: GEMMs, attention, element-wise fusions, ...

Reads JAX's ``perfetto_trace.json.gz`` (``jax.profiler.trace(..., create_perfetto_trace=True)``) or a PyTorch
chrome trace (``torch.profiler``'s ``export_chrome_trace``). Device events are the kernels on GPU streams
(JAX: threads named "Stream ..." of a "/device:GPU:N" process; PyTorch: events of category "kernel",
"gpu_memcpy" or "gpu_memset"). Reports, per step: device-busy time (the union of kernel intervals), the
wall span of the traced steps, the idle share (launch gaps, host synchronisation), time by category, and
the top kernels.

  python benchmarks/profile_summary.py TRACE [--steps 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
from collections import defaultdict
from typing import Optional

# First match wins; matched against the lower-cased kernel (or HLO op) name.
CATEGORIES = (
    ("attention", r"fmha|flash|sdpa|mha|cudnn.*att|attention_kernel"),
    ("gemm", r"gemm|cublas|cutlass|xmma|nvjet|matmul|\bdot\b|dot_|_dot|sm90_|sm80_|wgmma"),
    ("conv", r"conv"),
    ("copy", r"memcpy|memset|copy|transpose"),
    ("reduction", r"reduce|reduction|triton_red|triton_per"),
    ("elementwise", r"fusion|loop|triton_poi|elementwise|vectorized|unrolled|kernel"),
)


def find_trace(directory: str) -> Optional[str]:
  """The newest perfetto_trace.json.gz under a jax.profiler log directory."""
  found = []
  for root, _, files in os.walk(directory):
    for f in files:
      if f == "perfetto_trace.json.gz":
        found.append(os.path.join(root, f))
  return max(found, key=os.path.getmtime) if found else None


def load_events(path: str) -> list[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def category(name: str) -> str:
  low = name.lower()
  for cat, pattern in CATEGORIES:
    if re.search(pattern, low):
      return cat
  return "other"


def _category_of(e: dict) -> str:
  """By kernel name (XLA names its kernels after their fusions: gemm_fusion_dot..., loop_add_fusion...; cuBLAS,
  cuDNN and PyTorch kernels keep their library names); the HLO op name only when the name says nothing. Scope
  paths in other arguments would mislead (every op of a block sits under ".../self_attn/...")."""
  cat = category(str(e.get("name", "")))
  if cat == "other":
    cat = category(str((e.get("args") or {}).get("hlo_op", "")))
  return cat


def device_events(events: list[dict]) -> list[dict]:
  """Complete ('X') kernel events on device streams."""
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      procs[e.get("pid")] = str(e.get("args", {}).get("name", ""))
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name", ""))
  torch_kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
  if torch_kernels:
    return torch_kernels
  gpu_pids = {p for p, n in procs.items() if re.search(r"/device:(gpu|tpu)", n.lower())}
  on_gpu = [e for e in events if e.get("ph") == "X" and e.get("pid") in gpu_pids]
  streams = [e for e in on_gpu if "stream" in threads.get((e.get("pid"), e.get("tid")), "").lower()]
  return streams or on_gpu


def _union(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if e <= end:
      continue
    total += e - max(s, end)
    end = e
  return total


def summarize(events: list[dict], *, steps: int = 1, top: int = 12) -> dict:
  dev = device_events(events)
  if not dev:
    return {"note": "no device kernel events in the trace (CPU run, or the profiler saw no GPU activity)"}
  spans = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in dev]
  wall = max(e for _, e in spans) - min(s for s, _ in spans)
  busy = _union(spans)
  by_cat, by_name, count, cats = defaultdict(float), defaultdict(float), defaultdict(int), {}
  for e in dev:
    name = str(e.get("name", "?"))
    d = float(e.get("dur", 0.0))
    cat = _category_of(e)
    by_cat[cat] += d
    by_name[name] += d
    count[name] += 1
    cats[name] = cat
  kernel_total = sum(by_cat.values())
  ms = 1e-3 / max(steps, 1)  # trace times are microseconds
  return {
      "steps": steps,
      "device_wall_ms_per_step": wall * ms,
      "device_busy_ms_per_step": busy * ms,
      "device_idle_fraction": 1.0 - busy / wall if wall > 0 else None,
      "kernels_per_step": len(dev) / max(steps, 1),
      "time_by_category_ms_per_step": {k: v * ms for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
      "share_by_category": {k: v / kernel_total for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}
      if kernel_total else {},
      "top_kernels": [{"name": n[:160], "category": cats[n], "ms_per_step": t * ms, "calls_per_step":
                       count[n] / max(steps, 1), "share": t / kernel_total if kernel_total else None}
                      for n, t in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]],
  }


def summarize_file(path: str, *, steps: int = 1, top: int = 12) -> dict:
  return summarize(load_events(path), steps=steps, top=top)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("trace", help="perfetto_trace.json.gz, a chrome trace .json, or a jax.profiler log directory")
  p.add_argument("--steps", type=int, default=1, help="steps in the trace (per-step figures divide by it)")
  p.add_argument("--top", type=int, default=15)
  args = p.parse_args(argv)
  path = find_trace(args.trace) if os.path.isdir(args.trace) else args.trace
  if path is None:
    raise SystemExit(f"no perfetto_trace.json.gz under {args.trace}")
  print(json.dumps(summarize_file(path, steps=args.steps, top=args.top), indent=1))


if __name__ == "__main__":
  main()
