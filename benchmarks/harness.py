"""Train-step throughput and MFU of deft_jax and of a PyTorch peer: one JSON line per configuration.

Steps: ``phase2_fft`` (CLIP vision tower fine-tuned + linear head), ``phase1_vpt_deep`` (the DEFT detector
with 20 deep visual prompts and dual text prompts over C=100 classes), ``phase1_lora`` (LoRA rank 8 on q, v
instead of VPT; deft_jax only). Every configuration prints: framework, step, model, image_size, batch, dtype,
attention, remat, images_per_s, step_time_s (median of the timed steps, each synchronised), compile_s,
model_flops (flops.py states the convention), xla_flops (JAX's cost analysis), mfu (model FLOPs / step time /
the device's data-sheet peak; null on an unknown device), peak_memory_bytes, device, versions. A failing
configuration prints a line with ``error`` / ``error_kind`` (oom, error, timeout, budget, skipped) instead.

Each group of configurations that differ only in batch size runs in its own worker process (ascending batch;
after an OOM the larger batches are skipped), so that JAX and PyTorch never share the GPU, peak memory is per
group, and a crash or a timeout loses one group only. ``--budget_s`` bounds the whole run.

  PYTHONPATH=. python3 benchmarks/harness.py                       # the GPU defaults (long: see run_gpu.sh)
  PYTHONPATH=. python3 benchmarks/harness.py --quick               # tiny model on the CPU, both frameworks
  PYTHONPATH=. python3 benchmarks/harness.py --frameworks jax --steps phase2_fft --models vit_b16 \\
      --batches 64,128 --attention xla,cudnn --remat off,on --out results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # on the workers' PYTHONPATH

from benchmarks import common

RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_BATCHES = {"vit_b16": (64, 128, 256, 512), "vit_b32": (64, 128, 256, 512)}
TORCH_STEPS = ("phase2_fft", "phase1_vpt_deep")


def _csv(s: str) -> list[str]:
  return [x.strip() for x in s.split(",") if x.strip()]


def _bools(s: str) -> list[bool]:
  out = []
  for x in _csv(s):
    if x.lower() not in ("on", "off", "true", "false", "1", "0"):
      raise argparse.ArgumentTypeError(f"expected on/off values, got {x!r}")
    out.append(x.lower() in ("on", "true", "1"))
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  p.add_argument("--frameworks", default="jax,torch", help="jax,torch")
  p.add_argument("--steps", default=",".join(common.STEPS), help=",".join(common.STEPS))
  p.add_argument("--models", default=None, help="CLIP presets (default vit_b16,vit_l14; --quick: tiny)")
  p.add_argument("--batches", default=None,
                 help="batch sizes for every model (default: 64,128,256 and 512 for B/16; --quick: 8)")
  p.add_argument("--dtypes", default="bfloat16", help="compute dtypes: bfloat16,float32")
  p.add_argument("--attention", default="xla", help="JAX attention: xla,cudnn (torch always uses sdpa)")
  p.add_argument("--remat", default="off", help="JAX per-block rematerialisation: off,on")
  p.add_argument("--scan", default="off", help="JAX scan over layers: off,on")
  p.add_argument("--torch_compile", default=None, help="off,on (default off,on; --quick: off)")
  p.add_argument("--image_size", type=int, default=0, help="0: the preset's")
  p.add_argument("--num_classes", type=int, default=100)
  p.add_argument("--n_ctx", type=int, default=16)
  p.add_argument("--vpt_tokens", type=int, default=20)
  p.add_argument("--lora_rank", type=int, default=8)
  p.add_argument("--text_prefix_sharing", default="on",
                 help="deft_jax phase 1: on (the shared prompt prefix once per context) or off (whole prompts)")
  p.add_argument("--text_chunk", type=int, default=0, help="deft_jax phase 1: prompts per text-tower chunk (0: all)")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps, the first included (default 3)")
  p.add_argument("--iters", type=int, default=None, help="timed steps (default 10; --quick: 3)")
  p.add_argument("--quick", action="store_true", help="CPU smoke mode: tiny preset, batch 8, few steps")
  p.add_argument("--out", default="", help="also append the JSON lines to this file")
  p.add_argument("--budget_s", type=float, default=0.0, help="wall budget of the whole run (0: none)")
  p.add_argument("--group_timeout_s", type=float, default=600.0, help="limit for one worker process")
  p.add_argument("--min_group_s", type=float, default=25.0,
                 help="do not start a group with less than this much budget left")
  p.add_argument("--profile", default="", help="write a profiler trace (and a summary in the record) here")
  p.add_argument("--profile_batches", default="", help="profile only these batch sizes (default: all)")
  p.add_argument("--no_calibrate", action="store_true", help="skip the per-worker matmul peak measurement")
  p.add_argument("--no_torch_flop_count", action="store_true", help="skip torch's FLOP counter step")
  p.add_argument("--inprocess", action="store_true", help="run every configuration in this process")
  p.add_argument("--list", action="store_true", help="print the configurations and exit")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def expand(args) -> list[list[common.BenchConfig]]:
  """Groups of configurations in run order; within a group only the batch differs (ascending)."""
  models = _csv(args.models) if args.models else (["tiny"] if args.quick else ["vit_b16", "vit_l14"])
  batches = [int(b) for b in _csv(args.batches)] if args.batches else None
  compile_opts = _bools(args.torch_compile) if args.torch_compile else ([False] if args.quick else [False, True])
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
  iters = args.iters if args.iters is not None else (3 if args.quick else 10)
  profile_batches = {int(b) for b in _csv(args.profile_batches)}
  steps = _csv(args.steps)
  unknown = sorted(set(steps) - set(common.STEPS))
  if unknown:
    raise SystemExit(f"unknown --steps {unknown}; choose from {common.STEPS}")
  sharing = _bools(args.text_prefix_sharing)
  if len(sharing) != 1:
    raise SystemExit(f"--text_prefix_sharing takes one value (on or off), got {args.text_prefix_sharing!r}")
  fws = _csv(args.frameworks)
  if set(fws) - set(common.FRAMEWORKS):
    raise SystemExit(f"unknown --frameworks {fws}; choose from {common.FRAMEWORKS}")
  groups = []
  for step in steps:
    for model in models:
      bs = sorted(batches or ([8] if args.quick else DEFAULT_BATCHES.get(model, (64, 128, 256))))
      for dtype in _csv(args.dtypes):
        for fw in fws:
          if fw == "torch":
            if step not in TORCH_STEPS:
              continue
            variants = [dict(attention="sdpa", torch_compile=c) for c in compile_opts]
          else:
            variants = [dict(attention=a, remat=r, scan=s) for a in _csv(args.attention)
                        for r in _bools(args.remat) for s in _bools(args.scan)]
          for v in variants:
            group = []
            for b in bs:
              prof = args.profile and (not profile_batches or b in profile_batches)
              group.append(common.BenchConfig(
                  framework=fw, step=step, model=model, batch=b, dtype=dtype, image_size=args.image_size,
                  num_classes=args.num_classes, n_ctx=args.n_ctx, vpt_tokens=args.vpt_tokens,
                  lora_rank=args.lora_rank, text_prefix_sharing=sharing[0],
                  text_chunk=args.text_chunk, warmup=warmup, iters=iters,
                  profile_dir=os.path.abspath(args.profile) if prof else "",
                  torch_flop_count=not args.no_torch_flop_count, **v))
            groups.append(group)
  return groups


# ----------------------------------------------------------------------------------------------- worker
def _jsonable(x):
  if hasattr(x, "item"):
    return x.item()
  return str(x)


def dumps(rec: dict) -> str:
  return json.dumps(rec, default=_jsonable, sort_keys=False)


def run_group(group: list[common.BenchConfig], *, calibrate: bool, emit, runner=None) -> None:
  """Runs a group in this process, calling ``emit(record)`` after each configuration.

  ``runner``: a module-like object with ``run(cfg, measured_peak)`` (and optionally ``calibrate(dtype)``,
  ``cleanup()``); by default run_jax or run_torch.
  """
  if runner is None:
    if group[0].framework == "jax":
      from benchmarks import run_jax as runner
    else:
      from benchmarks import run_torch as runner
  peak = None
  if calibrate and hasattr(runner, "calibrate"):
    try:
      peak = runner.calibrate(group[0].dtype)
    except Exception as e:  # noqa: BLE001 - a calibration failure must not cost the measurements
      print(f"[harness] calibration failed: {e}", file=sys.stderr)
  oom_at = None
  for cfg in sorted(group, key=lambda c: c.batch):
    t0 = time.perf_counter()
    if oom_at is not None:
      rec = common.error_record(cfg, f"skipped: batch {oom_at} already ran out of memory", "skipped")
    else:
      try:
        rec = runner.run(cfg, peak)
      except Exception as e:  # noqa: BLE001 - one failing configuration must not stop the others
        rec = common.error_record(cfg, e)
        if rec["error_kind"] == "oom":
          oom_at = cfg.batch
      finally:
        if hasattr(runner, "cleanup"):
          runner.cleanup()
    rec["wall_s"] = time.perf_counter() - t0
    emit(rec)


def worker_main(payload: str, calibrate: bool) -> None:
  group = [common.BenchConfig(**d) for d in json.loads(payload)]
  if group[0].framework == "torch":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the prompt template imports jax: keep it off the GPU

  def emit(rec):
    sys.stdout.write(RESULT_PREFIX + dumps(rec) + "\n")
    sys.stdout.flush()

  run_group(group, calibrate=calibrate, emit=emit)


# ----------------------------------------------------------------------------------------------- parent
def _reader(stream, q):
  for line in stream:
    q.put(line)
  q.put(None)


def spawn_group(group, *, timeout_s: float, calibrate: bool, emit) -> None:
  """Runs a group in a fresh worker process; configurations it did not report get an error record."""
  payload = json.dumps([dataclasses.asdict(c) for c in group])
  cmd = [sys.executable, "-u", os.path.abspath(__file__), "--worker", payload]
  if not calibrate:
    cmd.append("--no_calibrate")
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  # JAX reserves 75 % of the GPU by default; the worker owns the GPU alone, so let it use (almost) all of it,
  # as PyTorch's caching allocator does.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
  q: queue.Queue = queue.Queue()
  threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
  deadline = time.monotonic() + timeout_s
  reported = set()
  timed_out = False
  while True:
    try:
      line = q.get(timeout=max(deadline - time.monotonic(), 0.01))
    except queue.Empty:
      timed_out = True
      break
    if line is None:
      break
    rec = None
    if line.startswith(RESULT_PREFIX):
      try:
        rec = json.loads(line[len(RESULT_PREFIX):])
      except json.JSONDecodeError:  # mangled by a library writing to stdout: counts as not reported
        pass
    if rec is not None and rec.get("batch") in {c.batch for c in group} - reported:
      reported.add(rec["batch"])
      emit(rec)
    else:
      sys.stderr.write(line)
  if timed_out:
    try:
      os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and its compile workers
    except ProcessLookupError:
      pass
  rc = proc.wait()
  for cfg in group:
    if cfg.batch not in reported:
      why = (f"timeout: the group's worker was stopped after {timeout_s:.0f}s" if timed_out
             else f"worker exited with code {rc} before reporting")
      emit(common.error_record(cfg, why, "timeout" if timed_out else "crash"))


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    worker_main(args.worker, calibrate=not args.no_calibrate)
    return 0
  groups = expand(args)
  if args.list:
    for g in groups:
      for c in g:
        print(c.name())
    return 0
  out = open(args.out, "a") if args.out else None
  counts = {"ok": 0, "failed": 0}

  def emit(rec):
    line = dumps(rec)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()
    counts["failed" if rec.get("error") else "ok"] += 1

  start = time.monotonic()
  for group in groups:
    remaining = args.budget_s - (time.monotonic() - start) if args.budget_s else float("inf")
    if remaining < args.min_group_s:
      for cfg in group:
        emit(common.error_record(cfg, f"budget: less than {args.min_group_s:.0f}s of the {args.budget_s:.0f}s "
                                      "budget left for this group", "budget"))
      continue
    t0 = time.monotonic()
    if args.inprocess:
      run_group(group, calibrate=not args.no_calibrate, emit=emit)
    else:
      spawn_group(group, timeout_s=min(args.group_timeout_s, remaining), calibrate=not args.no_calibrate,
                  emit=emit)
    print(f"[harness] {group[0].name().rsplit('_b', 1)[0]}: {time.monotonic() - t0:.0f}s "
          f"(total {time.monotonic() - start:.0f}s)", file=sys.stderr, flush=True)
  if out:
    out.close()
  print(f"[harness] {counts['ok']} configuration(s) measured, {counts['failed']} failed or skipped",
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
