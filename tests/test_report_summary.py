"""The health summary dict and its one-screen text (deft_jax.report.summary)."""

import json

import numpy as np
import pytest

from deft_jax.report import ReportInputError, build_summary, format_health_summary

NAMES = ["cat", "dog", "bird", "fish"]
# idx:       0    1    2    3    4    5    6    7
GIVEN = np.array([0, 0, 0, 1, 1, 1, 2, 2], np.int32)
TRUTH = np.array([0, 1, 0, 1, 0, 1, 2, 1], np.int32)
DET = dict(
    p_clean=np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.95, 0.4], np.float32),
    is_clean=np.array([1, 0, 1, 1, 0, 0, 1, 0], bool),
    suggested=np.array([0, 1, 0, 1, 0, 1, 2, 1], np.int32))


def test_summary_counts_noise_and_detection_quality_by_hand():
  s = build_summary(DET, given=GIVEN, class_names=NAMES, clean_labels=TRUTH)
  assert (s["num_examples"], s["num_classes"], s["num_flagged"], s["num_clean"]) == (8, 4, 4, 4)
  assert s["estimated_noise_rate"] == pytest.approx(0.5)
  det = s["detection"]
  # truly clean {0,2,3,5,6}; selected {0,2,3,6} -> precision 1, recall 4/5
  assert det["precision"] == pytest.approx(1.0) and det["recall"] == pytest.approx(0.8)
  assert det["true_noise_rate"] == pytest.approx(3 / 8)
  # p_clean perfectly separates truly clean (0.9,0.8,0.7,0.3,0.95) from noisy (0.1,0.2,0.4) except 0.3 < 0.4
  assert det["auroc"] == pytest.approx(14 / 15)
  per = {r["name"]: r for r in s["per_class"]}
  assert (per["cat"]["count"], per["cat"]["flagged"]) == (3, 1)
  assert per["dog"]["estimated_noise_rate"] == pytest.approx(2 / 3)
  assert per["fish"]["count"] == 0 and per["fish"]["estimated_noise_rate"] is None


def test_confused_pairs_count_flagged_moves_most_frequent_first():
  s = build_summary(DET, given=GIVEN, class_names=NAMES)
  # flagged with a different suggestion: 1 (cat->dog), 4 (dog->cat), 7 (bird->dog); 5 keeps its label
  pairs = [(p["given_name"], p["predicted_name"], p["count"]) for p in s["confused_pairs"]]
  assert pairs == [("cat", "dog", 1), ("dog", "cat", 1), ("bird", "dog", 1)]
  given = np.array([0, 0, 0, 1, 1, 1, 2, 0], np.int32)  # index 7 now also cat -> dog
  s = build_summary(DET, given=given, class_names=NAMES)
  assert (s["confused_pairs"][0]["given_name"], s["confused_pairs"][0]["count"]) == ("cat", 2)


def test_summary_without_ground_truth_has_no_detection_section():
  s = build_summary(DET, given=GIVEN, class_names=NAMES)
  assert s["detection"] is None
  assert "precision" not in s["per_class"][0]


def test_summary_is_strict_json_with_nan_as_null_and_extra_sections_kept():
  extra = {"baselines": {"small-loss": {"precision": np.float32(0.8), "auroc": float("nan")}},
           "test_accuracy": np.float64(0.79)}
  s = build_summary(DET, given=GIVEN, class_names=NAMES, clean_labels=TRUTH, extra=extra)
  text = json.dumps(s, allow_nan=False)
  back = json.loads(text)
  assert back["baselines"]["small-loss"]["auroc"] is None
  assert back["test_accuracy"] == pytest.approx(0.79)


def test_extra_section_may_not_overwrite_builtin():
  with pytest.raises(ReportInputError, match="'detection' would overwrite"):
    build_summary(DET, given=GIVEN, class_names=NAMES, extra={"detection": {}})


def test_health_text_shows_headline_baselines_and_worst_classes():
  extra = {"baselines": {"CLIP label-match": {"precision": 0.7, "recall": 0.9, "f1": 0.7875, "auroc": 0.81}},
           "test_accuracy": 0.7904}
  s = build_summary(DET, given=GIVEN, class_names=NAMES, clean_labels=TRUTH, extra=extra)
  text = format_health_summary(json.loads(json.dumps(s)))
  assert "8 examples, 4 classes" in text
  assert "flagged as label issues: 4 (50.0%)" in text
  lines = text.splitlines()
  deft_row = next(line for line in lines if line.strip().startswith("DEFT "))
  assert deft_row.split()[1:] == ["100.0%", "80.0%", "88.9%", "0.933"]
  clip_row = next(line for line in lines if "CLIP label-match" in line)
  assert clip_row.split()[-4:] == ["70.0%", "90.0%", "78.8%", "0.810"]
  # the noisiest class (dog, 2 of 3 flagged) is listed first; the empty class is not listed
  start = next(i for i, line in enumerate(lines) if "Noisiest classes" in line) + 2
  class_rows = [line.split()[0] for line in lines[start:start + 4] if line.strip()]
  assert class_rows == ["dog", "bird", "cat"]
  assert "test_accuracy" in text and "0.7904" in text


def test_health_text_fits_one_screen_for_many_classes():
  rng = np.random.default_rng(0)
  n, c = 5000, 200
  names = [f"species_{k:03d}" for k in range(c)]
  given = rng.integers(0, c, n).astype(np.int32)
  p = rng.random(n).astype(np.float32)
  det = dict(p_clean=p, is_clean=p > 0.3, suggested=rng.integers(0, c, n).astype(np.int32))
  extra = {"baselines": {f"b{i}": {"precision": 0.5} for i in range(10)},
           **{f"section_{i}": i for i in range(10)}}
  s = build_summary(det, given=given, class_names=names, clean_labels=given, extra=extra)
  text = format_health_summary(s)
  assert len(text.splitlines()) <= 42
  assert "(10 of 200)" in text
  assert max(len(line) for line in text.splitlines()) <= 100


def test_shortened_fields_are_reported_beside_the_methods_values_and_cannot_go_stale():
  """report.shortened: each named field with this run's value and the method's (base_config's) default, in
  summary.json and on the report's screen. A name that is no field, or a field left at the method's value, is
  a ConfigError: the list a demo prints cannot claim a shortening it does not make."""
  from deft_jax import config_lib
  from deft_jax.errors import ConfigError
  from deft_jax.report.summary import format_health_summary

  c = config_lib.base_config()
  c.detect.epochs, c.adapt.epochs = 4, 2
  c.report.shortened = ("detect.epochs", "adapt.epochs")
  got = config_lib.shortened(c)
  assert got == {"detect.epochs": {"value": 4, "method": 10}, "adapt.epochs": {"value": 2, "method": 10}}
  text = format_health_summary({"num_examples": 10, "num_classes": 2, "num_flagged": 1, "num_clean": 9,
                                "estimated_noise_rate": 0.1, "shortened": got})
  assert "shortened against the method's recipe: detect.epochs=4 (10), adapt.epochs=2 (10)" in text
  c.report.shortened = ("detect.epochs", "baselines.epochs")
  with pytest.raises(ConfigError, match="baselines.epochs.*equals the method's value 10"):
    config_lib.shortened(c)
  c.report.shortened = ("detect.epoch",)
  with pytest.raises(ConfigError, match="'detect.epoch', which is not a config field"):
    config_lib.shortened(c)


def test_the_screen_says_which_class_probabilities_were_exported_and_what_full_would_weigh():
  """The report's pred_probs section (issue: ImageNet scale): full or top-k, the files, and for top-k the size
  of the [N, C] matrix it avoided; once a bare 'Other:' entry."""
  base = {"num_examples": 1_281_167, "num_classes": 1000, "num_flagged": 1, "num_clean": 9,
          "estimated_noise_rate": 0.1}
  topk = {"mode": "topk", "setting": "auto", "k": 5, "full_bytes": 4 * 1_281_167 * 1000,
          "files": ["pred_probs_topk.npy", "pred_probs_topk_classes.npy"]}
  text = format_health_summary({**base, "pred_probs": topk})
  assert ("class probabilities: top-5, pred_probs_topk.npy, pred_probs_topk_classes.npy (report.pred_probs=auto); "
          "the full [N, C] matrix would be 4.8 GiB") in text
  assert "Other:" not in text
  full = {"mode": "full", "setting": "full", "full_bytes": 160000, "files": ["pred_probs.npy"]}
  assert "class probabilities: full, pred_probs.npy (report.pred_probs=full)\n" in format_health_summary(
      {**base, "pred_probs": full}) + "\n"
