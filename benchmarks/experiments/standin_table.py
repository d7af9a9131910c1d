r"""The detection table on one stand-in VLM, rebuilt from its sweep's JSON lines: every detector on every cell,
whether DEFT is first, and the options beyond the method against the method.

Reads the rows of benchmarks/experiments/strong_vlm_sweep.py run with ``--checkpoint`` (one VLM; a later row for
the same cell, recipe, variant and method replaces an earlier one) and writes a Markdown block:

  * per cell (a CIFAR-10N label set, or symR: symmetric noise at rate R on the clean labels): every method's F1,
    AUROC, AUROC on look-alike swaps, flagged share against the noise rate and missed noise at the noise budget,
    DEFT's rows once per phase-1 recipe (the baselines do not read phase 1's settings);
  * "Is DEFT first?": per cell and recipe, the best F1 among all detectors against DEFT's mask, and the best AUROC
    against DEFT's best ranking;
  * "Past the paper": each variant (``--variant`` rows) against the method on the same cells and recipe.

  PYTHONPATH=. python benchmarks/experiments/standin_table.py --checkpoint "clip (40 epochs)" \
      --results benchmarks/results/detection_strong_vlm.jsonl benchmarks/results/detection_options.jsonl \
      --readme README.md BENCHMARKS.md

With --readme the block between <!-- standin-table:begin --> and <!-- standin-table:end --> of each file is
replaced (nothing else changes); without it the block goes to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.experiments.strong_vlm_table import BASELINES, DISPLAY, is_deft

BEGIN, END = "<!-- standin-table:begin -->", "<!-- standin-table:end -->"
CELLS = ("aggre_label", "random_label1", "worse_label", "sym0", "sym0.05", "sym0.2", "sym0.4")
MASKS = ("deft", "deft_scoring_pass")
RANKINGS = ("deft", "deft_scoring_pass", "deft_label_probability", "deft_strict_margin")
ORDER = (*RANKINGS, *BASELINES, "keep_all")


def load(paths, checkpoint: str = "") -> dict:
  """{(label_set, recipe or None, variant, method): row}, the last row per key; baselines get recipe None.
  ``checkpoint``: only the rows of that VLM (the sweep's "checkpoint" field, e.g. "clip (40 epochs)")."""
  rows = {}
  for path in paths:
    for line in Path(path).read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        if checkpoint and r.get("checkpoint") != checkpoint:
          continue
        recipe = r.get("recipe", "synthetic") if is_deft(r["method"]) else None
        rows[(r["label_set"], recipe, r.get("variant", ""), r["method"])] = r
  return rows


def _f(v, pct: bool = False) -> str:
  if v is None or v != v:  # None or NaN
    return "-"
  return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def cell_name(label_set: str) -> str:
  if label_set.startswith("sym"):
    rate = float(label_set[3:])
    return "clean labels (0 % noise)" if rate == 0 else f"symmetric noise {100 * rate:g} %"
  return f"CIFAR-10N `{label_set}`"


def _cells(rows) -> list[str]:
  present = {k[0] for k in rows}
  return [c for c in CELLS if c in present] + sorted(present - set(CELLS))


def _recipes(rows, cell) -> list[str]:
  return sorted({k[1] for k in rows if k[0] == cell and k[1] is not None and not k[2]}, reverse=True)


def cell_table(rows, cell) -> list[str]:
  out = [f"**{cell_name(cell)}**", "",
         "| detector | recipe | F1 | AUROC | AUROC on swaps | flagged % (noise %) | missed at budget % |",
         "|---|---|---|---|---|---|---|"]
  for recipe in (*_recipes(rows, cell), None):
    for m in ORDER:
      r = rows.get((cell, recipe, "", m))
      if r is None or (recipe is None) == is_deft(m):
        continue
      out.append(f"| {DISPLAY[m]} | {recipe or 'any'} | {_f(r['f1'])} | {_f(r['auroc'])} | "
                 f"{_f(r.get('auroc_swaps'))} | {_f(r['flagged_fraction'], True)} ({_f(r['noise_rate'], True)}) | "
                 f"{_f(r['fnr_at_noise_budget'], True)} |")
  return out + [""]


def first_table(rows) -> list[str]:
  """Per cell and recipe: is DEFT's mask first on F1, and one DEFT ranking first on AUROC?"""
  out = ["| cell | recipe | best F1 (detector) | DEFT mask F1 | gap | best AUROC (detector) | best DEFT ranking "
         "AUROC | gap |", "|---|---|---|---|---|---|---|---|"]
  for cell in _cells(rows):
    base = {m: rows[(cell, None, "", m)] for m in (*BASELINES, "keep_all") if (cell, None, "", m) in rows}
    for recipe in _recipes(rows, cell):
      deft = {m: rows[(cell, recipe, "", m)] for m in RANKINGS if (cell, recipe, "", m) in rows}
      every = {**base, **deft}
      f1 = {m: r["f1"] for m, r in every.items() if r["f1"] is not None}
      au = {m: r["auroc"] for m, r in every.items() if r["auroc"] is not None}
      best_f1 = max(f1, key=f1.get)
      mask = max((m for m in MASKS if m in f1), key=f1.get)
      ranking = "- | - | - |"  # clean labels: nothing to rank, AUROC undefined
      if au:
        best_au, rank = max(au, key=au.get), max((m for m in RANKINGS if m in au), key=au.get)
        ranking = (f"{_f(au[best_au])} ({DISPLAY[best_au]}) | {_f(au[rank])} ({DISPLAY[rank]}) | "
                   f"{au[rank] - au[best_au]:+.3f} |")
      out.append(f"| {cell_name(cell)} | {recipe} | {_f(f1[best_f1])} ({DISPLAY[best_f1]}) | "
                 f"{_f(f1[mask])} ({DISPLAY[mask]}) | {f1[mask] - f1[best_f1]:+.3f} | {ranking}")
  return out + [""]


def variants_table(rows) -> list[str]:
  """Each variant's DEFT rows against the method's on the same cell and recipe."""
  variants = sorted({k[2] for k in rows if k[2]})
  if not variants:
    return []
  out = ["| variant | cell | recipe | mask F1 (method) | margin AUROC (method) | swaps AUROC (method) | "
         "strict margin AUROC (method) | flagged % (method) |", "|---|---|---|---|---|---|---|---|"]
  for v in variants:
    for cell in _cells(rows):
      for recipe in sorted({k[1] for k in rows if k[0] == cell and k[2] == v and k[1]}, reverse=True):
        new, old = rows.get((cell, recipe, v, "deft")), rows.get((cell, recipe, "", "deft"))
        if new is None:
          continue
        o = old or {}
        sm_new, sm_old = rows.get((cell, recipe, v, "deft_strict_margin"), {}), rows.get(
            (cell, recipe, "", "deft_strict_margin"), {})
        out.append(f"| `{v}` | {cell_name(cell)} | {recipe} | {_f(new['f1'])} ({_f(o.get('f1'))}) | "
                   f"{_f(new['auroc'])} ({_f(o.get('auroc'))}) | {_f(new.get('auroc_swaps'))} "
                   f"({_f(o.get('auroc_swaps'))}) | {_f(sm_new.get('auroc'))} ({_f(sm_old.get('auroc'))}) | "
                   f"{_f(new['flagged_fraction'], True)} ({_f(o.get('flagged_fraction'), True)}) |")
  return out + [""]


def block(rows, source: str) -> str:
  lines = [BEGIN, f"<!-- generated by benchmarks/experiments/standin_table.py from {source}; do not edit -->", ""]
  for cell in _cells(rows):
    lines += cell_table(rows, cell)
  lines += ["Is DEFT first? Per cell and phase-1 recipe: the best F1 of every detector against DEFT's mask (online "
            "or scoring pass, the better), and the best AUROC against DEFT's best ranking (margin, scoring-pass "
            "margin, p+(label) or strict margin).", ""]
  lines += first_table(rows)
  var = variants_table(rows)
  if var:
    lines += ["Past the paper: each option beyond the method against the method (in brackets), same cell and recipe.",
              ""] + var
  return "\n".join(lines + [END])


def replace_block(path: Path, text: str) -> None:
  old = path.read_text()
  begin, end = old.index(BEGIN), old.index(END) + len(END)
  path.write_text(old[:begin] + text + old[end:])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--results", nargs="+", required=True)
  p.add_argument("--checkpoint", default="", help="only this VLM's rows (the rows' checkpoint field)")
  p.add_argument("--readme", nargs="*", default=[], help="files whose marked block is replaced")
  args = p.parse_args()
  text = block(load(args.results, args.checkpoint), ", ".join(args.results))
  if not args.readme:
    print(text)
  for f in args.readme:
    replace_block(Path(f), text)


if __name__ == "__main__":
  main()
