"""Markdown tables for BENCHMARKS.md from the harness's JSON lines.

  python benchmarks/summarize.py results.jsonl [more.jsonl ...] > tables.md

Tables: the environment; deft_jax against the PyTorch peer per (step, model, dtype, batch) with the ratio
of images/s (deft_jax's best variant over PyTorch's best); every measurement; the profiles' summaries; and
the configurations that failed or were skipped, with why.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Iterable, Optional

GIB = 2.0 ** 30


def load(paths: Iterable[str]) -> list[dict]:
  recs = []
  for p in paths:
    with (sys.stdin if p == "-" else open(p)) as f:
      for line in f:
        line = line.strip()
        if line.startswith("{"):
          try:
            recs.append(json.loads(line))
          except json.JSONDecodeError:
            continue
  return recs


def _f(x, fmt: str = "{:.1f}", none: str = "–") -> str:
  return none if x is None else fmt.format(x)


def _pct(x) -> str:
  return _f(None if x is None else 100 * x, "{:.1f} %")


def _table(header: list[str], rows: list[list[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(out)


def environment(recs: list[dict]) -> str:
  rows = []
  for fw in ("jax", "torch"):
    mine = [x for x in recs if x.get("framework") == fw and x.get("device")]
    if mine:
      r = mine[0]
      libs = ", ".join(f"{k} {val}" for k, val in r.get("versions", {}).items())
      measured = {x["dtype"]: x["measured_peak_tflops"] for x in mine if x.get("measured_peak_tflops")}
      meas = ", ".join(f"{v:.0f} ({k})" for k, v in sorted(measured.items())) or "–"
      rows.append([fw, r["device"], _f(r.get("peak_tflops"), "{:.1f}"), meas, libs])
  return _table(["framework", "device", "data-sheet peak TFLOP/s", "measured matmul TFLOP/s", "versions"], rows)


def _ok(recs):
  return [r for r in recs if not r.get("error") and r.get("images_per_s")]


def _best(rs: list[dict]) -> Optional[dict]:
  return max(rs, key=lambda r: r["images_per_s"]) if rs else None


def comparison(recs: list[dict]) -> str:
  cells = defaultdict(list)
  for r in _ok(recs):
    cells[(r["step"], r["model"], r["dtype"], r["batch"])].append(r)
  rows = []
  for key in sorted(cells, key=lambda k: (k[0] != "phase2_fft", k[0], k[1], k[2], k[3])):
    rs = cells[key]
    jx = [r for r in rs if r["framework"] == "jax"]
    eager = _best([r for r in rs if r["framework"] == "torch" and not r.get("torch_compile")])
    comp = _best([r for r in rs if r["framework"] == "torch" and r.get("torch_compile")])
    jdef = _best([r for r in jx if r.get("variant") == "xla"])
    jbest = _best(jx)
    tbest = _best([x for x in (eager, comp) if x])
    if not jbest and not tbest:
      continue
    rows.append([key[0], key[1], key[2], str(key[3]),
                 _f(jdef and jdef["images_per_s"]), _pct(jdef and jdef["mfu"]),
                 f"{jbest['images_per_s']:.1f} ({jbest['variant']})" if jbest else "–",
                 _pct(jbest and jbest["mfu"]),
                 _f(eager and eager["images_per_s"]), _f(comp and comp["images_per_s"]), _pct(tbest and tbest["mfu"]),
                 _f(jbest["images_per_s"] / tbest["images_per_s"] if jbest and tbest else None, "{:.2f}x")])
  return _table(["step", "model", "dtype", "batch", "deft_jax img/s (xla)", "MFU", "deft_jax best img/s (variant)",
                 "MFU", "torch eager img/s", "torch compile img/s", "MFU (best torch)", "deft_jax / best torch"], rows)


def measurements(recs: list[dict]) -> str:
  rows = []
  order = lambda r: (r["step"] != "phase2_fft", r["step"], r["model"], r["dtype"], r["framework"],  # noqa: E731
                     r.get("variant", ""), r["batch"])
  for r in sorted(_ok(recs), key=order):
    mem = r.get("peak_memory_bytes")
    ratio = r.get("xla_flops_ratio") or r.get("torch_counted_flops_ratio")
    rows.append([r["framework"], r["step"], r["model"], r["dtype"], r.get("variant", ""), str(r["batch"]),
                 _f(r["images_per_s"]), _f(1e3 * r["step_time_s"], "{:.2f}"), _f(r.get("achieved_tflops")),
                 _pct(r.get("mfu")), _pct(r.get("mfu_3x")), _f(mem and mem / GIB, "{:.2f}"), _f(r.get("compile_s")),
                 _f(ratio, "{:.3f}")])
  return _table(["framework", "step", "model", "dtype", "variant", "batch", "img/s", "step ms", "TFLOP/s", "MFU",
                 "MFU (3x conv.)", "peak GiB", "compile s", "counted / model FLOPs"], rows)


def profiles(recs: list[dict]) -> str:
  rows = []
  for r in recs:
    p = r.get("profile")
    if not p or "share_by_category" not in p:
      continue
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(p["share_by_category"].items())[:5])
    top = "; ".join(f"{k['name'][:50]} ({100 * (k['share'] or 0):.0f} %)" for k in p.get("top_kernels", [])[:3])
    rows.append([r["framework"], r["step"], r["model"], r.get("variant", ""), str(r["batch"]),
                 _f(p.get("device_busy_ms_per_step"), "{:.2f}"), _pct(p.get("device_idle_fraction")), shares, top])
  if not rows:
    return ""
  return _table(["framework", "step", "model", "variant", "batch", "device busy ms/step", "device idle",
                 "kernel time by category", "top kernels"], rows)


def failures(recs: list[dict]) -> str:
  rows = [[r.get("framework", "?"), r.get("step", "?"), r.get("model", "?"), r.get("dtype", "?"),
           r.get("variant", ""), str(r.get("batch", "?")), r.get("error_kind", "error"),
           r["error"][:140].replace("|", "/").replace("\n", " ")] for r in recs if r.get("error")]
  fallbacks = [[r["framework"], r["step"], r["model"], r["dtype"], r["variant"], str(r["batch"]), "fallback",
                r["fallback"][:140].replace("|", "/").replace("\n", " ")] for r in recs if r.get("fallback")]
  rows += fallbacks
  if not rows:
    return ""
  return _table(["framework", "step", "model", "dtype", "variant", "batch", "kind", "why"], rows)


def render(recs: list[dict]) -> str:
  parts = ["### Environment", environment(recs), "",
           "### deft_jax vs PyTorch (images/s; ratio = deft_jax's best variant / PyTorch's best)", comparison(recs), "",
           "### All measurements (MFU = model FLOPs / median step time / data-sheet dense peak)", measurements(recs)]
  prof = profiles(recs)
  if prof:
    parts += ["", "### Profiles (three steps)", prof]
  fail = failures(recs)
  if fail:
    parts += ["", "### Failed, skipped or fallen back", fail]
  return "\n".join(parts) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("files", nargs="+", help="JSON-lines files from harness.py ('-' for stdin)")
  args = p.parse_args(argv)
  sys.stdout.write(render(load(args.files)))


if __name__ == "__main__":
  main()
