"""The dataset health summary: a JSON-serialisable dict and its one-screen text rendering.

Summary layout (every value JSON-native; undefined rates are ``None``)::

    method, num_examples, num_classes, num_flagged, num_clean, estimated_noise_rate,
    detection:      {num_known, true_noise_rate, precision, recall, f1, auroc} or None
    per_class:      [{label, name, count, flagged, estimated_noise_rate[, true_noise_rate,
                      precision, recall, f1]}, ...] in label order
    confused_pairs: [{given_label, given_name, predicted_label, predicted_name, count}, ...]
                    flagged examples whose suggestion differs from the given label, most frequent first
    phase1_recipe:  {recipe, overrides, strict_selection, warmup_epochs, warmup_loss, pseudo_labels_from_epoch,
                    schedule_decay}: the phase-1 recipe the detector trained with (config_lib.phase1_recipe)
    ranking:        detect.ranking, what ``score`` (the CSV's order, the AUROC) is (RANKING_WORDS)
    shortened:      {field: {value, method}}: what the config cut from the method's recipe (report.shortened)
    corrections:    what a reviewer's corrections file changed (rows, applied, relabeled, changed, dropped,
                    kept), when the run applied one (data.corrections)
    ...             caller sections (``extra``), e.g. ``baselines: {name: {precision, recall, f1,
                    auroc}}`` (rendered as a comparison table) or ``test_accuracy``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from deft_jax.report import metrics as report_metrics
from deft_jax.report.inputs import ReportInputError, ReportInputs, check_inputs

_RATE_KEYS = ("precision", "recall", "f1", "true_noise_rate")


def to_jsonable(obj: Any) -> Any:
  """NumPy/JAX scalars and arrays -> Python; NaN/inf -> None (strict JSON has no NaN)."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (str, bool, type(None))):
    return obj
  if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__array__"):
    arr = np.asarray(obj)
    return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
  if isinstance(obj, int):
    return int(obj)
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  raise TypeError(f"cannot put a {type(obj).__name__} into summary.json: {obj!r}")


def summary_from_inputs(
    inputs: ReportInputs, *, extra: Mapping[str, Any] | None = None, method_name: str = "DEFT",
    max_pairs: int = 20,
) -> dict:
  """:func:`build_summary` for already validated inputs."""
  c = inputs.num_classes
  overall = report_metrics.detection_metrics(inputs.is_clean, inputs.given, inputs.clean_labels)
  per = report_metrics.per_class_detection_metrics(inputs.is_clean, inputs.given, c, inputs.clean_labels)
  summary: dict[str, Any] = {
      "method": method_name,
      "num_examples": inputs.num_examples,
      "num_classes": c,
      "num_flagged": overall["count"] - overall["selected"],
      "num_clean": overall["selected"],
      "estimated_noise_rate": overall["estimated_noise_rate"],
      "detection": None,
  }
  if inputs.clean_labels is not None and overall["known"] > 0:
    known = inputs.known
    summary["detection"] = {
        "num_known": overall["known"],
        **{k: overall[k] for k in _RATE_KEYS},
        "auroc": report_metrics.auroc(inputs.score, inputs.truly_clean, mask=known),
    }
  per_class = []
  for k in range(c):
    row = {"label": k, "name": inputs.class_names[k], "count": per["count"][k],
           "flagged": per["count"][k] - per["selected"][k],
           "estimated_noise_rate": per["estimated_noise_rate"][k]}
    if summary["detection"] is not None:
      row.update({key: per[key][k] for key in _RATE_KEYS})
    per_class.append(row)
  summary["per_class"] = per_class
  summary["confused_pairs"] = _confused_pairs(inputs, max_pairs)
  for key, value in (extra or {}).items():
    if key in summary:
      raise ReportInputError(f"extra summary section {key!r} would overwrite a built-in section")
    summary[key] = value
  return to_jsonable(summary)


def _confused_pairs(inputs: ReportInputs, max_pairs: int) -> list[dict]:
  c = inputs.num_classes
  moved = ~inputs.is_clean & (inputs.suggested != inputs.given)
  codes, counts = np.unique(inputs.given[moved].astype(np.int64) * c + inputs.suggested[moved],
                            return_counts=True)
  order = np.lexsort((codes, -counts))[:max_pairs]  # most frequent first, then by (given, suggested)
  names = inputs.class_names
  return [
      {"given_label": int(code // c), "given_name": names[code // c],
       "predicted_label": int(code % c), "predicted_name": names[code % c], "count": int(n)}
      for code, n in zip(codes[order], counts[order])
  ]


def build_summary(detection: Mapping[str, np.ndarray], *, given, class_names: Sequence[str], clean_labels=None,
                  extra: Mapping[str, Any] | None = None, method_name: str = "DEFT", max_pairs: int = 20) -> dict:
  """Counts, estimated noise overall / per class, confused pairs and (with ground truth)
  precision, recall, F1 and AUROC of the ranking score against truly-clean; see the module docstring.

  ``extra`` sections are merged at the top level (a name clash with a built-in section is an
  error); ``extra["baselines"] = {name: {"precision": .., "recall": .., "f1": .., "auroc": ..}}``
  is rendered as a comparison table by :func:`format_health_summary`.
  """
  inputs = check_inputs(detection, given=given, class_names=class_names, clean_labels=clean_labels)
  return summary_from_inputs(inputs, extra=extra, method_name=method_name, max_pairs=max_pairs)


# ----------------------------------------------------------------------------- text rendering

_BUILTIN = {"warnings", "corrections", "phase1_recipe", "ranking", "shortened", "pred_probs", "method",
            "num_examples", "num_classes", "num_flagged", "num_clean", "estimated_noise_rate", "detection", "per_class",
            "confused_pairs", "baselines"}


def _missing(x) -> bool:
  return x is None or (isinstance(x, float) and math.isnan(x))


def format_pct(x, digits: int = 1) -> str:
  """A rate as "12.3%" ("-" when it is undefined: None or NaN)."""
  return "-" if _missing(x) else f"{100 * float(x):.{digits}f}%"


_pct = format_pct


def _num(x) -> str:
  return "-" if _missing(x) else f"{x:.3f}"


def _cut(s: str, width: int) -> str:
  if len(s) <= width:
    return s
  head = (width - 1) // 2  # keep both ends: long class names differ at the end (car model years)
  return s[:head] + "~" + s[len(s) - (width - 1 - head):]


def _value(v) -> str:
  if _missing(v):
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, Mapping):
    v = ", ".join(f"{k}={_value(x)}" for k, x in v.items())
  if isinstance(v, (list, tuple)):
    return f"[{len(v)} items]"
  v = str(v)
  return v if len(v) <= 72 else v[:69] + "..."


def _short(v) -> str:
  return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def pred_probs_line(p: Mapping[str, Any]) -> str:
  """'class probabilities: full, pred_probs.npy (report.pred_probs=auto)': which of the detector's class
  probabilities the report exported, and the size the full [N, C] matrix would have had."""
  files = ", ".join(p.get("files") or []) or "none exported"
  what = f"top-{p['k']}" if p.get("mode") == "topk" else p.get("mode")
  line = f"class probabilities: {what}, {files} (report.pred_probs={p.get('setting')})"
  if p.get("mode") != "full" and p.get("full_bytes"):
    line += f"; the full [N, C] matrix would be {p['full_bytes'] / 2**30:.1f} GiB"
  return line


def recipe_line(r: Mapping[str, Any]) -> str:
  """'phase-1 recipe: real_noise (strict rule, 5 SCE warm-up epochs, pseudo-labels from epoch 2, constant lr)',
  with the fields a config set against its recipe after it."""
  warm, pseudo = r.get("warmup_epochs"), r.get("pseudo_labels_from_epoch")
  parts = ["strict rule" if r.get("strict_selection") else "p_clean > 0.5",
           f"{warm} {str(r.get('warmup_loss', '')).upper()} warm-up epoch{'s' * (warm != 1)}",
           f"pseudo-labels from epoch {pseudo}" if pseudo is not None else "pseudo-labels after warm-up",
           f"{r.get('schedule_decay')} lr"]
  line = f"phase-1 recipe: {r.get('recipe')} ({', '.join(parts)})"
  if r.get("overrides"):
    line += "; set against the recipe: " + ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
  return line


# detect.ranking -> what the report's ``score`` (the CSV's order, the AUROC) is, in words
RANKING_WORDS = {
    "label_probability": "p(given label) under the positive prompts, scoring pass",
    "margin": "the margin s+ - s- at the given label",
    "strict_margin": "the strict-rule margin, scoring pass",
}


def ranking_line(ranking: str) -> str:
  """'ranked by: p(given label) under the positive prompts, scoring pass (detect.ranking=label_probability)'."""
  return f"ranked by: {RANKING_WORDS.get(ranking, ranking)} (detect.ranking={ranking})"


def vlm_warnings(given, suggested, num_classes: int, *, zero_shot=None) -> list[str]:
  """Plain-words warnings when the vision-language model does not seem to know the classes: its zero-shot
  predictions (``zero_shot``, else the detector's suggestions) agree with the given labels barely more than
  chance, or one class takes almost every suggestion. A CLIP trained on other data runs to the end and gives
  chance-level results; these say so instead of leaving a plausible-looking report."""
  given = np.asarray(given)
  out = []
  if len(given) == 0 or num_classes < 2:
    return out
  chance = 1.0 / num_classes
  pred = np.asarray(suggested if zero_shot is None else zero_shot)
  agree = float(np.mean(pred == given))
  who = "CLIP's zero-shot predictions" if zero_shot is not None else "the detector's suggested labels"
  if agree < chance + 0.1 * (1.0 - chance):
    out.append(f"{who} agree with the given labels on only {100 * agree:.1f}% of the examples (chance: "
               f"{100 * chance:.1f}%): the model does not seem to know these classes (wrong checkpoint, class names "
               "that do not match the images, or a model trained on other data), so the label scores are close to "
               "random. Check data.class_names / the checkpoint before trusting this report.")
  counts = np.bincount(np.asarray(suggested), minlength=num_classes)
  top = int(counts.argmax())
  share, given_share = counts[top] / len(given), float(np.mean(given == top))
  if num_classes > 2 and share > 0.8 and given_share < 0.5:
    out.append(f"one class takes {100 * share:.0f}% of the suggested labels (class {top}, which only "
               f"{100 * given_share:.0f}% of the given labels name): the model prefers one prompt whatever the image, "
               "a sign that it does not tell these classes apart.")
  return out


def format_health_summary(summary: Mapping[str, Any], *, max_classes: int = 10, max_pairs: int = 5,
                          max_rows: int = 6) -> str:
  """One screen (<= ~40 lines) of text: headline counts, detection quality, a baselines table,
  the noisiest classes (the worst ``max_classes`` when there are more), the most confused pairs
  and any extra sections. Works on the dict of :func:`build_summary` or its JSON round trip."""
  lines = [f"Label health report ({summary.get('method', 'DEFT')}): "
           f"{summary['num_examples']:,} examples, {summary['num_classes']} classes",
           f"  flagged as label issues: {summary['num_flagged']:,} "
           f"({_pct(summary['estimated_noise_rate'])})   kept as clean: {summary['num_clean']:,}"]
  if summary.get("phase1_recipe"):
    lines.append("  " + recipe_line(summary["phase1_recipe"]))
  if summary.get("ranking"):
    lines.append("  " + ranking_line(summary["ranking"]))
  if summary.get("shortened"):
    lines.append("  shortened against the method's recipe: " + ", ".join(
        f"{k}={_short(v['value'])} ({_short(v['method'])})" for k, v in summary["shortened"].items()))
  if summary.get("pred_probs"):
    lines.append("  " + pred_probs_line(summary["pred_probs"]))
  fixes = summary.get("corrections")
  if fixes:
    lines.append(f"  corrections applied: {fixes['applied']:,} rows of {fixes['file']} ({fixes['relabeled']:,} "
                 f"relabeled, {fixes['dropped']:,} dropped, {fixes['kept']:,} kept)")
  for w in summary.get("warnings") or []:
    lines.append(f"  WARNING: {w}")
  det = summary.get("detection")
  if det:
    lines += [f"  ground truth known for {det['num_known']:,}: "
              f"true noise rate {_pct(det['true_noise_rate'])}",
              f"  clean selection vs. truth: precision {_pct(det['precision'])}"
              f"  recall {_pct(det['recall'])}  F1 {_pct(det['f1'])}  AUROC {_num(det['auroc'])}"]
  baselines = summary.get("baselines") or {}
  if baselines:
    rows = ([(summary.get("method", "DEFT"), det)] if det else []) + list(baselines.items())
    lines += ["", f"  {'method':<24}{'precision':>10}{'recall':>9}{'F1':>9}{'AUROC':>8}"]
    for name, m in rows[:max_rows]:
      m = m or {}
      lines.append(f"  {_cut(str(name), 23):<24}{_pct(m.get('precision')):>10}"
                   f"{_pct(m.get('recall')):>9}{_pct(m.get('f1')):>9}{_num(m.get('auroc')):>8}")
    if len(rows) > max_rows:
      lines.append(f"  ... {len(rows) - max_rows} more in summary.json")
  per_class = [r for r in summary.get("per_class", []) if r["count"]]
  if per_class:
    worst = sorted(per_class, key=lambda r: (-(r["estimated_noise_rate"] or 0.0), r["label"]))
    shown = worst[:max_classes]
    what = "all" if len(shown) == len(per_class) else f"{len(shown)} of {len(per_class)}"
    truth = det is not None
    lines += ["", f"  Noisiest classes by estimated noise ({what}):",
              f"  {'class':<26}{'n':>8}{'flagged':>9}{'est.noise':>11}"
              + (f"{'true':>8}" if truth else "")]
    for r in shown:
      lines.append(f"  {_cut(r['name'], 25):<26}{r['count']:>8,}{r['flagged']:>9,}"
                   f"{_pct(r['estimated_noise_rate']):>11}"
                   + (f"{_pct(r.get('true_noise_rate')):>8}" if truth else ""))
  pairs = summary.get("confused_pairs") or []
  if pairs:
    lines += ["", "  Most frequent suggested fixes among flagged (given -> suggested):"]
    for p in pairs[:max_pairs]:
      pair = f"{_cut(p['given_name'], 22)} -> {_cut(p['predicted_name'], 22)}"
      lines.append(f"  {pair:<50}{p['count']:>8,}")
  others = [k for k in summary if k not in _BUILTIN]
  if others:
    lines += ["", "  Other:"]
    for k in others[:max_rows]:
      lines.append(f"  {_cut(k, 26):<28}{_value(summary[k])}")
    if len(others) > max_rows:
      lines.append(f"  ... {len(others) - max_rows} more sections in summary.json")
  return "\n".join(lines)
