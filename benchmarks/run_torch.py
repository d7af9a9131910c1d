"""Times one PyTorch peer configuration (see torch_peer.py) and returns its JSON record.

compile_s is null in eager mode; with ``torch.compile`` it is the first step's wall time (compilation happens
lazily inside it). Peak memory is ``torch.cuda.max_memory_allocated`` since the first step.
``torch_counted_flops`` is ``torch.utils.flop_counter`` over one eager step: the FLOPs PyTorch itself
dispatched, to check that the peer does the same work as the analytic count (and so as deft_jax).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time

import torch
import torch._dynamo as dynamo

from benchmarks import common, flops
from benchmarks import torch_peer
from deft_jax.models import presets

NUM_EXAMPLES = 50_000


def _device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: torch.device) -> str:
  if dev.type == "cuda":
    return torch.cuda.get_device_name(dev)
  import platform
  return platform.processor() or platform.machine() or "cpu"


def _sync(dev):
  if dev.type == "cuda":
    torch.cuda.synchronize(dev)


def setup_numerics():
  """fp32 matmuls on tensor cores (TF32), as XLA does by default for float32 on GPUs."""
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.set_float32_matmul_precision("high")


def calibrate(dtype: str, n: int = 8192, iters: int = 20) -> float | None:
  """Measured matmul TFLOP/s of the device (an n^3 product on random data); None on CPU."""
  dev = _device()
  if dev.type != "cuda":
    return None
  dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
  a = torch.randn(n, n, device=dev, dtype=dt)
  b = torch.randn(n, n, device=dev, dtype=dt)
  for _ in range(3):
    a @ b
  _sync(dev)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    a @ b
    _sync(dev)
    times.append(time.perf_counter() - t0)
  times.sort()
  return 2.0 * n ** 3 / times[len(times) // 2] / 1e12


def _sgd(params, lr, dev):
  kw = dict(lr=lr, momentum=0.9, weight_decay=5e-4)
  if dev.type == "cuda":
    try:
      return torch.optim.SGD(params, fused=True, **kw)
    except (TypeError, RuntimeError):  # older torch without a fused SGD
      pass
  return torch.optim.SGD(params, **kw)


def _config(cfg: common.BenchConfig) -> presets.CLIPConfig:
  c = presets.get_preset(cfg.model)
  if cfg.image_size and cfg.image_size != c.vision.image_size:
    c = c.replace(vision=dataclasses.replace(c.vision, image_size=cfg.image_size))
  return c


def build(cfg: common.BenchConfig, dev: torch.device):
  """(model, make_step(forward) -> step function, template text length, CLIPConfig)."""
  c = _config(cfg)
  hf = torch_peer.hf_config(c)
  torch.manual_seed(0)
  text_len = 0
  with torch.device(dev):
    if cfg.step == "phase2_fft":
      model = torch_peer.FFTModel(hf, cfg.num_classes)
      lr = 5e-4
    elif cfg.step == "phase1_vpt_deep":
      from deft_jax.models.prompts import build_template
      from deft_jax.models.tokenizer import Tokenizer
      template = build_template(common.class_names(cfg.num_classes), Tokenizer(), n_ctx=cfg.n_ctx)
      text_len = int(template.ids.shape[1])
      model = torch_peer.VPTDeepCLIP(hf, template, vpt_tokens=cfg.vpt_tokens)
      lr = 0.03
    else:
      raise ValueError(f"the PyTorch peer has no {cfg.step!r} step (it implements phase2_fft and phase1_vpt_deep)")
  model.train()
  opt = _sgd([p for p in model.parameters() if p.requires_grad], lr, dev)
  b, size = cfg.batch, c.vision.image_size
  gen = torch.Generator(device="cpu").manual_seed(0)
  images = torch.randn(b, 3, size, size, generator=gen).to(dev)
  labels = torch.randint(0, cfg.num_classes, (b,), generator=gen).to(dev)
  index = torch.randperm(NUM_EXAMPLES, generator=gen)[:b].to(dev)
  fields = (("p_clean", torch.float32), ("selected", torch.bool), ("suggested", torch.long), ("margin", torch.float32))
  online = {k: torch.zeros(NUM_EXAMPLES, dtype=dt, device=dev) for k, dt in fields}

  def amp():
    if cfg.dtype == "bfloat16":
      return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def make_step(fwd):
    def step():
      with amp():
        if cfg.step == "phase2_fft":
          loss = fwd(images, labels)
        else:
          offsets = torch.randint(1, cfg.num_classes, (b,), device=dev)
          loss, outs = fwd(images, labels, offsets)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      if cfg.step != "phase2_fft":
        with torch.no_grad():
          for k, v in zip(("p_clean", "selected", "suggested", "margin"), outs):
            online[k][index] = v.to(online[k].dtype)
      return loss
    return step

  return model, make_step, text_len, c


def run(cfg: common.BenchConfig, measured_peak: float | None = None) -> dict:
  dev = _device()
  setup_numerics()
  rec = common.base_record(cfg)
  rec["attention"] = "sdpa"
  t0 = time.perf_counter()
  model, make_step, text_len, c = build(cfg, dev)
  _sync(dev)
  rec["init_s"] = time.perf_counter() - t0
  rec["image_size"] = c.vision.image_size
  eager_step = make_step(model)

  counted = None
  if cfg.torch_flop_count:
    from torch.utils.flop_counter import FlopCounterMode
    try:
      with FlopCounterMode(display=False) as fc, _countable_attention(model, dev):
        eager_step()
      _sync(dev)
      counted = float(fc.get_total_flops())
    except Exception as e:  # noqa: BLE001 - the count is a cross-check, not the measurement
      if common.is_oom(e):
        raise
      rec["torch_flop_count_error"] = f"{type(e).__name__}: {e}"[:300]
  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)

  step = eager_step
  if cfg.torch_compile:
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = make_step(torch.compile(model))
  t0 = time.perf_counter()
  loss = step()
  _sync(dev)
  first = time.perf_counter() - t0
  rec["first_step_s"] = first
  rec["compile_s"] = first if cfg.torch_compile else None
  if cfg.torch_compile:
    rec["graph_breaks"] = int(sum(dynamo.utils.counters["graph_break"].values()))

  times, loss = common.time_steps(step, lambda _: _sync(dev), warmup=max(cfg.warmup - 1, 0), iters=cfg.iters)
  rec["loss"] = float(loss.detach())

  if cfg.profile_dir:
    rec["profile"] = common.safe_profile(lambda: _profile(step, dev, cfg))

  ops = flops.step_products(cfg.step, c, batch=cfg.batch, num_classes=cfg.num_classes, text_len=text_len,
                            vpt_tokens=cfg.vpt_tokens, lora_rank=cfg.lora_rank)
  name = device_name(dev)
  common.add_throughput(rec, times, batch=cfg.batch, model_flops=flops.total(ops), model_flops_3x=flops.total_3x(ops),
                        device=name, dtype=cfg.dtype, measured_peak=measured_peak)
  rec["torch_counted_flops"] = counted
  rec["torch_counted_flops_ratio"] = counted / rec["model_flops"] if counted else None
  rec["text_len"] = text_len or None
  rec["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
  rec["device"] = name
  rec["platform"] = dev.type
  rec["versions"] = common.versions(("torch", "transformers", "numpy", "triton"))
  if dev.type == "cuda":
    rec["versions"]["cuda"] = torch.version.cuda
    rec["versions"]["cudnn"] = torch.backends.cudnn.version()
  return rec


@contextlib.contextmanager
def _countable_attention(model, dev):
  """On the CPU, HF's matmul ("eager") attention for the counting step: the flop counter knows PyTorch's fused
  attention kernels on CUDA but not the CPU one. Same FLOPs (the causal mask is dropped, which costs none)."""
  if dev.type == "cuda":
    yield
    return
  configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values()
  saved = [(c, c._attn_implementation) for c in configs]
  for c, _ in saved:
    c._attn_implementation = "eager"
  try:
    yield
  finally:
    for c, impl in saved:
      c._attn_implementation = impl


def _profile(step, dev, cfg) -> dict:
  """A chrome trace of three steps, summarised (see profile_summary.py)."""
  import os

  from benchmarks import profile_summary
  from torch.profiler import ProfilerActivity, profile

  acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
  with profile(activities=acts) as prof:
    for _ in range(3):
      step()
    _sync(dev)
  os.makedirs(cfg.profile_dir, exist_ok=True)
  path = os.path.join(cfg.profile_dir, cfg.name() + ".trace.json")
  prof.export_chrome_trace(path)
  summary = profile_summary.summarize_file(path, steps=3)
  summary["trace"] = path
  return summary


def cleanup():
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
  dynamo.reset()
