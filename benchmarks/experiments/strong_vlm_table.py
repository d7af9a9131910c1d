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

METHODS = ("deft", "deft_scoring_pass", "deft_label_probability", "label_match", "small_loss", "gmm", "cleanlab_cl",
           "cleanlab_datalab", "keep_all")
DISPLAY = {"deft": "DEFT", "deft_scoring_pass": "DEFT scoring pass", "deft_label_probability": "DEFT p+(label)",
           "label_match": "label-match",
           "small_loss": "small-loss", "gmm": "GMM", "cleanlab_cl": "cleanlab CL", "cleanlab_datalab": "Datalab",
           "keep_all": "keep all"}
BASELINES = ("label_match", "small_loss", "gmm", "cleanlab_cl", "cleanlab_datalab")
LABEL_SETS = ("aggre_label", "random_label1", "worse_label")
BEGIN, END = "<!-- strong-vlm:begin -->", "<!-- strong-vlm:end -->"


def load(paths) -> list[dict]:
  """The rows of every file, the last one per (checkpoint, label set, method) kept, in first-seen order."""
  rows = {}
  for path in paths:
    for line in Path(path).read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        rows[(r["checkpoint"], r["label_set"], r["method"])] = r
  return list(rows.values())


def _cells(rows):
  """{label_set: {zero_shot_acc: {method: row}}}, label sets in LABEL_SETS order, strengths ascending."""
  out: dict = {}
  for r in rows:
    out.setdefault(r["label_set"], {}).setdefault(r["zero_shot_acc"], {})[r["method"]] = r
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


def markdown(rows) -> str:
  cells = _cells(rows)
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


def plot(rows, path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  cells = _cells(rows)
  fig = Figure(figsize=(4.2 * len(cells), 7.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, len(cells), squeeze=False)
  colors = {m: f"C{i}" for i, m in enumerate(METHODS)}  # one colour per method in every panel
  handles = {}
  for j, (label_set, by_strength) in enumerate(cells.items()):
    for i, key in enumerate(("f1", "auroc")):
      ax = axes[i][j]
      for m in METHODS:
        pts = [(100 * acc, c[m][key]) for acc, c in by_strength.items() if m in c and c[m][key] is not None]
        if pts:
          xs, ys = zip(*pts)
          style = "-" if m.startswith("deft") else ("--" if m == "keep_all" else ":")
          (line,) = ax.plot(xs, [100 * y if key == "f1" else y for y in ys], style, marker="o", ms=4,
                            color=colors[m], label=DISPLAY[m], lw=2.2 if m == "deft" else 1.3)
          handles.setdefault(m, line)
      noise = _any_row(by_strength)["noise_rate"]
      ax.set_title(f"{label_set} ({100 * noise:.1f} % noise)", fontsize=10)
      ax.set_xlabel("VLM zero-shot accuracy (%)")
      ax.set_ylabel("F1 of the clean selection (%)" if key == "f1" else "AUROC (given label is right)")
      ax.grid(alpha=0.3)
  shown = [m for m in METHODS if m in handles]
  fig.legend([handles[m] for m in shown], [DISPLAY[m] for m in shown], loc="lower center", ncol=min(5, len(shown)),
             fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)


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
  block = markdown(rows)
  if args.plot:
    plot(rows, args.plot)
    block += f"\n![detector F1 and AUROC by VLM strength]({args.plot})\n"
  if args.readme:
    path = Path(args.readme)
    path.write_text(replace_block(path.read_text(), block))
  else:
    print(block)


if __name__ == "__main__":
  main()
