"""Detection / classification metrics (deft_jax.report.metrics), checked against hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from deft_jax.report import metrics as report_metrics


# given:        0  0  0  1  1  1  2  2
# truth:        0  1  0  1  0  1  2 -1  (-1 = unknown)
# truly clean:  T  F  T  T  F  T  T  ?
# selected:     T  T  F  T  F  F  T  T
GIVEN = np.array([0, 0, 0, 1, 1, 1, 2, 2])
TRUTH = np.array([0, 1, 0, 1, 0, 1, 2, -1])
SELECTED = np.array([1, 1, 0, 1, 0, 0, 1, 1], bool)


def test_detection_metrics_match_hand_counts():
  m = report_metrics.detection_metrics(SELECTED, GIVEN, TRUTH)
  # known: 7; truly clean: {0,2,3,5,6} = 5; selected ∩ known: {0,1,3,6} = 4; tp: {0,3,6} = 3
  assert (m["count"], m["selected"], m["known"], m["truly_clean"], m["true_positive"]) == (8, 5, 7, 5, 3)
  assert m["precision"] == pytest.approx(3 / 4)
  assert m["recall"] == pytest.approx(3 / 5)
  assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
  assert m["selected_fraction"] == pytest.approx(5 / 8)
  assert m["estimated_noise_rate"] == pytest.approx(3 / 8)
  assert m["true_noise_rate"] == pytest.approx(2 / 7)


def test_masked_examples_never_count():
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  garbage = GIVEN.copy()
  garbage[6:] = 999  # padding labels are not validated or counted
  m = report_metrics.detection_metrics(SELECTED, garbage, TRUTH, mask=mask)
  assert (m["count"], m["selected"], m["truly_clean"], m["true_positive"]) == (6, 3, 4, 2)
  assert m["precision"] == pytest.approx(2 / 3)
  assert m["recall"] == pytest.approx(2 / 4)


def test_empty_selection_has_precision_zero_and_f1_zero():
  m = report_metrics.detection_metrics(np.zeros(8, bool), GIVEN, TRUTH)
  assert m["precision"] == 0.0
  assert m["recall"] == 0.0
  assert m["f1"] == 0.0
  assert m["estimated_noise_rate"] == 1.0


def test_without_ground_truth_only_selection_statistics_are_reported():
  m = report_metrics.detection_metrics(SELECTED, GIVEN)
  assert "precision" not in m and "recall" not in m
  assert m["selected_fraction"] == pytest.approx(5 / 8)
  all_unknown = report_metrics.detection_metrics(SELECTED, GIVEN, np.full(8, -1))
  assert math.isnan(all_unknown["precision"]) and math.isnan(all_unknown["recall"])


def test_per_class_metrics_by_given_label_with_empty_class_nan():
  per = report_metrics.per_class_detection_metrics(SELECTED, GIVEN, 4, TRUTH)
  np.testing.assert_array_equal(per["count"], [3, 3, 2, 0])
  np.testing.assert_array_equal(per["selected"], [2, 1, 2, 0])
  np.testing.assert_allclose(per["estimated_noise_rate"][:3], [1 / 3, 2 / 3, 0.0])
  # class 0: truly clean {0,2}, selected {0,1} -> tp 1, precision 1/2, recall 1/2
  # class 1: truly clean {3,5}, selected {3}   -> precision 1, recall 1/2
  # class 2: truly clean {6} (7 unknown), selected ∩ known {6} -> precision 1, recall 1
  np.testing.assert_allclose(per["precision"][:3], [0.5, 1.0, 1.0])
  np.testing.assert_allclose(per["recall"][:3], [0.5, 0.5, 1.0])
  np.testing.assert_allclose(per["true_noise_rate"][:3], [1 / 3, 1 / 3, 0.0])
  for key in ("precision", "recall", "f1", "estimated_noise_rate", "true_noise_rate"):
    assert np.isnan(per[key][3]), key
  assert report_metrics.macro_average(per["precision"]) == pytest.approx((0.5 + 1 + 1) / 3)


def test_macro_average_of_all_nan_is_nan_without_warning():
  with np.errstate(all="raise"):
    assert math.isnan(report_metrics.macro_average([np.nan, np.nan]))


def test_per_class_rejects_given_labels_outside_range():
  with pytest.raises(report_metrics.MetricInputError, match=r"\[0, 2\).*entry 3 is 2"):
    report_metrics.per_class_detection_metrics(SELECTED[:4], np.array([0, 1, 1, 2]), 2)


def test_average_ranks_share_ties():
  np.testing.assert_allclose(report_metrics.average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def _auroc_by_pairs(scores, positive):
  pos, neg = scores[positive], scores[~positive]
  return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_auroc_hand_values_and_ties_count_half():
  assert report_metrics.auroc([0.9, 0.8, 0.1, 0.2], np.array([1, 1, 0, 0], bool)) == 1.0
  assert report_metrics.auroc([0.1, 0.2, 0.9, 0.8], np.array([1, 1, 0, 0], bool)) == 0.0
  # pairs: (0.5 vs 0.5) = 1/2, (0.5 vs 0.1) = 1, (0.7 vs 0.5) = 1, (0.7 vs 0.1) = 1 -> 3.5 / 4
  assert report_metrics.auroc([0.5, 0.7, 0.5, 0.1], np.array([1, 1, 0, 0], bool)) == pytest.approx(0.875)


def test_auroc_equals_pairwise_definition_on_random_data_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 6, 200) / 5.0  # few distinct values -> many ties
  positive = rng.random(200) < 0.4
  assert report_metrics.auroc(scores, positive) == pytest.approx(_auroc_by_pairs(scores, positive), abs=1e-12)


def test_auroc_undefined_for_single_class_and_respects_mask():
  assert math.isnan(report_metrics.auroc([0.1, 0.2], np.array([True, True])))
  mask = np.array([True, True, False])
  assert math.isnan(report_metrics.auroc([0.1, 0.2, 0.3], np.array([True, True, False]), mask=mask))


def test_topk_counts_label_among_k_best_and_ties_follow_the_argmax_convention():
  """Ties used to count in the label's favour (all-equal logits made every example correct); now the lower
  class index wins a tie, as argmax does."""
  logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
  labels = np.array([1, 0, 1, 0])
  np.testing.assert_array_equal(report_metrics.topk_correct(logits, labels, 1), [False, False, False, True])
  np.testing.assert_array_equal(report_metrics.topk_correct(logits, labels, 1), logits.argmax(1) == labels)
  np.testing.assert_array_equal(report_metrics.topk_correct(logits, labels, 2), [True, False, True, True])
  np.testing.assert_array_equal(report_metrics.topk_correct(logits, labels, 5), [True, True, True, True])


def test_classification_metrics_ignore_padding_and_report_per_class():
  logits = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [5.0, 0, 0, 0], [0, 0, 5.0, 0], [0, 5.0, 0, 0]])
  labels = np.array([0, 1, 1, 2, -7])  # last row is padding with a junk label
  mask = np.array([1, 1, 1, 1, 0], bool)
  out = report_metrics.classification_metrics(labels, num_classes=4, logits=logits, mask=mask, topk=(1, 2))
  assert out["count"] == 4
  assert out["top1"] == pytest.approx(3 / 4)
  assert out["top2"] == pytest.approx(1.0)  # ties at 0 favour the label for the missed example
  np.testing.assert_allclose(out["per_class_accuracy"][:3], [1.0, 0.5, 1.0])
  assert np.isnan(out["per_class_accuracy"][3])
  assert out["mean_per_class_accuracy"] == pytest.approx(2.5 / 3)
  preds = report_metrics.classification_metrics(labels, num_classes=4, predictions=logits.argmax(1), mask=mask)
  assert preds["top1"] == pytest.approx(3 / 4)


def test_bad_metric_input_names_the_problem():
  with pytest.raises(report_metrics.MetricInputError, match="given has 3 entries, expected 8"):
    report_metrics.detection_metrics(SELECTED, GIVEN[:3])
  with pytest.raises(report_metrics.MetricInputError, match="is_clean must be bool"):
    report_metrics.detection_metrics(SELECTED.astype(float), GIVEN)
  with pytest.raises(report_metrics.MetricInputError, match="exactly one of logits or predictions"):
    report_metrics.classification_metrics(GIVEN, num_classes=3)
