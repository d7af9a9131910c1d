r"""The README's detection-by-VLM-strength results, rebuilt from the sweep's JSON lines: tables and a plot.

Reads benchmarks/results/detection_strong_vlm.jsonl (rows of benchmarks/experiments/strong_vlm_sweep.py; a
later row for the same checkpoint, label set and method replaces an earlier one) and writes

  * a Markdown block: per label set, F1 / AUROC of every method by VLM strength; DEFT's margin over the best
    baseline; the share DEFT flags against the true noise rate; every method's missed noise at the noise budget;
  * a plot: detector F1 (top) and AUROC (bottom) against zero-shot accuracy, one line per method, one column per
    label set.

  PYTHONPATH=. python benchmarks/experiments/strong_vlm_table.py \
      --results benchmarks/results/detection_strong_vlm.jsonl --plot docs/detection_by_vlm_strength.png \
      --readme README.md

With --readme the block between the markers <!-- strong-vlm:begin --> and <!-- strong-vlm:end --> is replaced
(nothing else in the file changes); without it the block goes to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("deft", "deft_scoring_pass", "deft_label_probability", "deft_strict_margin", "label_match", "small_loss",
           "gmm", "cleanlab_cl", "cleanlab_datalab", "keep_all")
DISPLAY = {"deft": "DEFT", "deft_scoring_pass": "DEFT scoring pass", "deft_label_probability": "DEFT p+(label)",
           "deft_strict_margin": "DEFT strict margin", "label_match": "label-match",
           "small_loss": "small-loss", "gmm": "GMM", "cleanlab_cl": "cleanlab CL", "cleanlab_datalab": "Datalab",
           "keep_all": "keep all"}
BASELINES = ("label_match", "small_loss", "gmm", "cleanlab_cl", "cleanlab_datalab")
LABEL_SETS = ("aggre_label", "random_label1", "worse_label")
RECIPES = {"real_noise": "the real-noise recipe (the reference's for human noise: strict rule, 5 SCE warm-up "
                         "epochs, pseudo-labels from epoch 2, constant lr)",
           "synthetic": "the synthetic-noise recipe (loose rule p_clean > 0.5, 1 CE warm-up epoch, cosine lr)"}
BEGIN, END = "<!-- strong-vlm:begin -->", "<!-- strong-vlm:end -->"


def is_deft(method: str) -> bool:
  """DEFT's rows depend on phase 1's recipe; the baselines' do not (they never read config.detect)."""
  return method.startswith("deft")


def load(paths) -> list[dict]:
  """The rows of every file, the last one per (recipe, checkpoint, label set, method) kept, in first-seen
  order. A row without "recipe" ran the synthetic one (the only one before the field existed); a baseline's row
  gets recipe None, whichever recipe its DEFT run had."""
  rows = {}
  for path in paths:
    for line in Path(path).read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        r["recipe"] = r.get("recipe", "synthetic") if is_deft(r["method"]) else None
        rows[(r["recipe"], r["checkpoint"], r["label_set"], r["method"])] = r
  return list(rows.values())


def recipes(rows) -> list[str]:
  return [k for k in RECIPES if any(r["recipe"] == k for r in rows)]


def _cells(rows, recipe="synthetic"):
  """{label_set: {zero_shot_acc: {method: row}}} of DEFT under ``recipe`` and every baseline, label sets in
  LABEL_SETS order, strengths ascending; a strength without a DEFT row of the recipe is left out."""
  out: dict = {}
  for r in rows:
    if r["recipe"] in (None, recipe):  # strengths to 0.1 point: two pretraining runs of one command differ by less
      out.setdefault(r["label_set"], {}).setdefault(round(r["zero_shot_acc"], 3), {})[r["method"]] = r
  out = {s: {a: c for a, c in by.items() if any(is_deft(m) for m in c)} for s, by in out.items()}
  out = {s: by for s, by in out.items() if by}
  order = [s for s in LABEL_SETS if s in out] + sorted(s for s in out if s not in LABEL_SETS)
  return {s: dict(sorted(out[s].items())) for s in order}


def _any_row(by_strength: dict) -> dict:
  """A row of a label set's cells (its noise rate and size are the same in all)."""
  return next(iter(next(iter(by_strength.values())).values()))


def _pct(x):
  return "–" if x is None else f"{100 * x:.1f}"


def _auc(x):
  return "–" if x is None else f"{x:.3f}"


def margins(cell: dict, method: str = "deft") -> dict:
  """DEFT's F1 and AUROC minus the best baseline's (keep-all counted for F1), with the best's name."""
  f1_rivals = {m: cell[m]["f1"] for m in (*BASELINES, "keep_all") if m in cell}
  auc_rivals = {m: cell[m]["auroc"] for m in BASELINES if m in cell and cell[m]["auroc"] is not None}
  out = {}
  if method in cell and f1_rivals:
    best = max(f1_rivals, key=f1_rivals.get)
    out["f1"] = (cell[method]["f1"] - f1_rivals[best], best)
  if method in cell and auc_rivals and cell[method]["auroc"] is not None:
    best = max(auc_rivals, key=auc_rivals.get)
    out["auroc"] = (cell[method]["auroc"] - auc_rivals[best], best)
  return out


def markdown(rows, recipe="synthetic") -> str:
  cells = _cells(rows, recipe)
  present = [m for m in METHODS if any(m in c for s in cells.values() for c in s.values())]
  lines = []
  for label_set, by_strength in cells.items():
    noise, n = _any_row(by_strength)["noise_rate"], _any_row(by_strength)["num_examples"]
    lines += [f"**`{label_set}`** ({100 * noise:.1f} % noise, {n:,} images): F1 / AUROC", "",
              "| zero-shot | " + " | ".join(DISPLAY[m] for m in present) + " | DEFT − best baseline (F1 / AUROC) |",
              "|---" * (len(present) + 2) + "|"]
    for acc, cell in by_strength.items():
      vals = [(f"{_pct(cell[m]['f1'])} / {_auc(cell[m]['auroc'])}" if cell[m]["f1"] is not None
               else _auc(cell[m]["auroc"])) if m in cell else "" for m in present]
      mg = margins(cell)
      f1m = f"{100 * mg['f1'][0]:+.1f} ({DISPLAY[mg['f1'][1]]})" if "f1" in mg else "–"
      aum = f"{mg['auroc'][0]:+.3f} ({DISPLAY[mg['auroc'][1]]})" if "auroc" in mg else "–"
      lines.append(f"| {100 * acc:.1f} % | " + " | ".join(vals) + f" | {f1m} / {aum} |")
    lines.append("")
  lines += ["Share of examples flagged (DEFT online / scoring pass) against the true noise rate, and the share "
            "of truly mislabelled examples each method misses when it flags exactly the noise rate's share "
            "(its lowest-ranked examples; lower is better):", "",
            "| label set | zero-shot | noise | DEFT flags | pass flags | "
            + " | ".join(f"missed: {DISPLAY[m]}" for m in present if m != "keep_all") + " |",
            "|---" * (5 + len([m for m in present if m != "keep_all"])) + "|"]
  for label_set, by_strength in cells.items():
    for acc, cell in by_strength.items():
      any_row = next(iter(cell.values()))
      flags = [_pct(cell[m]["flagged_fraction"]) + " %" if m in cell else "" for m in ("deft", "deft_scoring_pass")]
      missed = [_pct(cell[m]["fnr_at_noise_budget"]) if m in cell else "" for m in present if m != "keep_all"]
      lines.append(f"| `{label_set}` | {100 * acc:.1f} % | {100 * any_row['noise_rate']:.1f} % | "
                   + " | ".join(flags) + " | " + " | ".join(missed) + " |")
  return "\n".join(lines) + "\n"


PLOTTED_DEFT = ("deft", "deft_label_probability")  # per recipe; the other DEFT rankings are in the tables only
RECIPE_STYLE = {"synthetic": "-", "real_noise": "-."}


def plot(rows, path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  shown_recipes = recipes(rows)
  by_recipe = {k: _cells(rows, k) for k in shown_recipes}
  label_sets = list(dict.fromkeys(s for c in by_recipe.values() for s in c))
  fig = Figure(figsize=(4.2 * len(label_sets), 7.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, len(label_sets), squeeze=False)
  colors = {m: f"C{i}" for i, m in enumerate(METHODS)}  # one colour per method in every panel
  handles = {}
  for j, label_set in enumerate(label_sets):
    for i, key in enumerate(("f1", "auroc")):
      ax = axes[i][j]
      for k in shown_recipes:
        by_strength = by_recipe[k].get(label_set, {})
        for m in METHODS:
          if (is_deft(m) and m not in PLOTTED_DEFT) or (not is_deft(m) and k != shown_recipes[0]):
            continue
          pts = [(100 * acc, c[m][key]) for acc, c in by_strength.items() if m in c and c[m][key] is not None]
          if not pts:
            continue
          xs, ys = zip(*pts)
          style = RECIPE_STYLE[k] if is_deft(m) else ("--" if m == "keep_all" else ":")
          name = f"{DISPLAY[m]} ({k.replace('_', '-')} recipe)" if is_deft(m) else DISPLAY[m]
          (line,) = ax.plot(xs, [100 * y if key == "f1" else y for y in ys], style, marker="o", ms=4,
                            color=colors[m], label=name, lw=2.2 if m == "deft" else 1.3)
          handles.setdefault(name, line)
      noise = _any_row(next(c[label_set] for c in by_recipe.values() if label_set in c))["noise_rate"]
      ax.set_title(f"{label_set} ({100 * noise:.1f} % noise)", fontsize=10)
      ax.set_xlabel("VLM zero-shot accuracy (%)")
      ax.set_ylabel("F1 of the clean selection (%)" if key == "f1" else "AUROC (given label is right)")
      ax.grid(alpha=0.3)
  fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=7.5, frameon=False)
  fig.tight_layout(rect=(0, 0.09, 1, 1))
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)


def recipe_comparison(rows) -> str:
  """Per (label set, strength) run under both recipes: the share DEFT flags, its F1 and its AUROC, synthetic
  recipe / real-noise recipe."""
  syn, real = _cells(rows, "synthetic"), _cells(rows, "real_noise")
  lines = ["| label set | zero-shot | noise | DEFT flags | scoring pass flags | DEFT F1 | scoring pass F1 | "
           "margin AUROC (pass) | p+(label) AUROC | strict margin AUROC |", "|---" * 10 + "|"]
  for label_set, by_strength in real.items():
    for acc, cell in by_strength.items():
      other = syn.get(label_set, {}).get(acc, {})

      def pair(m, key, fmt, cell=cell, other=other):
        a = fmt(other[m][key]) if m in other else "–"
        b = fmt(cell[m][key]) if m in cell else "–"
        return f"{a} / {b}"
      noise = next(iter(cell.values()))["noise_rate"]
      lines.append(f"| `{label_set}` | {100 * acc:.1f} % | {100 * noise:.1f} % | "
                   + " | ".join([pair("deft", "flagged_fraction", _pct),
                                 pair("deft_scoring_pass", "flagged_fraction", _pct),
                                 pair("deft", "f1", _pct), pair("deft_scoring_pass", "f1", _pct),
                                 pair("deft_scoring_pass", "auroc", _auc),
                                 pair("deft_label_probability", "auroc", _auc),
                                 pair("deft_strict_margin", "auroc", _auc)]) + " |")
  return "\n".join(lines) + "\n"


def document(rows, plot_path="") -> str:
  """The whole block: per recipe (real-noise first) the tables of markdown(), then the recipes side by side."""
  parts = []
  for k in recipes(rows):
    parts += [f"#### Phase 1 by {RECIPES[k]}", "", markdown(rows, k)]
  if len(recipes(rows)) > 1:
    parts += ["#### What the real-noise recipe changes (each cell: synthetic recipe / real-noise recipe)", "",
              recipe_comparison(rows)]
  if plot_path:
    parts.append(f"![detector F1 and AUROC by VLM strength, both phase-1 recipes]({plot_path})\n")
  return "\n".join(parts)


def replace_block(text: str, block: str) -> str:
  if BEGIN not in text or END not in text:
    raise ValueError(f"the file has no {BEGIN} ... {END} block to replace")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return head + BEGIN + "\n" + block + END + tail


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--results", nargs="+", default=["benchmarks/results/detection_strong_vlm.jsonl"])
  p.add_argument("--plot", default="", help="write the F1/AUROC-vs-strength plot here (PNG)")
  p.add_argument("--readme", default="", help="replace the strong-VLM block of this Markdown file")
  args = p.parse_args()
  rows = load(args.results)
  if args.plot:
    plot(rows, args.plot)
  block = document(rows, args.plot)
  if args.readme:
    path = Path(args.readme)
    path.write_text(replace_block(path.read_text(), block))
  else:
    print(block)


if __name__ == "__main__":
  main()
