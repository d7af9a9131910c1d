"""The label-issues table (deft_jax.report.table) and the input validation behind it."""

import numpy as np
import pytest

from deft_jax.report import ReportInputError, label_issues_table
from deft_jax.report.table import COLUMNS, clean_mask_from_table

NAMES = ["cat", "dog", "bird"]


def _detection(**override):
  det = dict(
      p_clean=np.array([0.9, 0.2, 0.5, 0.2, 0.05], np.float32),
      is_clean=np.array([True, False, False, False, False]),
      suggested=np.array([0, 2, 1, 0, 1], np.int32),
      margin=np.array([1.0, -0.5, 0.0, -0.4, -2.0], np.float32))
  det.update(override)
  return det


GIVEN = np.array([0, 1, 1, 2, 0], np.int32)


def test_table_is_ranked_worst_first_with_ties_by_index():
  t = label_issues_table(_detection(), given=GIVEN, class_names=NAMES)
  assert t["index"].tolist() == [4, 1, 3, 2, 0]  # 0.05, then the 0.2 tie in index order, 0.5, 0.9
  assert t["label_score"].is_monotonic_increasing
  assert list(t.index) == list(range(5))


def test_table_columns_and_values_follow_the_cleanlab_shape():
  ids = np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
  t = label_issues_table(_detection(), given=GIVEN, class_names=NAMES, ids=ids)
  assert tuple(t.columns) == COLUMNS
  worst = t.iloc[0]
  assert worst["index"] == 4 and worst["id"] == "e.jpg"
  assert (worst["given_label"], worst["given_name"]) == (0, "cat")
  assert (worst["predicted_label"], worst["predicted_name"]) == (1, "dog")
  assert worst["is_label_issue"] and not t.set_index("index").loc[0, "is_label_issue"]
  assert worst["margin"] == pytest.approx(-2.0)


def test_ground_truth_adds_true_columns_with_unknown_as_minus_one():
  truth = np.array([0, 2, -1, 2, 1])
  t = label_issues_table(_detection(), given=GIVEN, class_names=NAMES, clean_labels=truth).set_index("index")
  assert t.loc[1, "true_name"] == "bird"
  assert (t.loc[2, "true_label"], t.loc[2, "true_name"]) == (-1, "")


def test_missing_margin_and_ids_are_filled_not_fatal():
  det = _detection()
  del det["margin"]
  t = label_issues_table(det, given=GIVEN, class_names=NAMES)
  assert t["margin"].isna().all()
  assert (t["id"] == "").all()


def test_clean_mask_round_trips_through_the_ranked_table():
  det = _detection()
  t = label_issues_table(det, given=GIVEN, class_names=NAMES)
  np.testing.assert_array_equal(clean_mask_from_table(t), det["is_clean"])


@pytest.mark.parametrize("override, kwargs, message", [
    (dict(p_clean=np.array([0.9, 0.2, 0.5], np.float32)), {}, r"p_clean has 3 entries, expected 5"),
    (dict(p_clean=np.array([0.9, 0.2, np.nan, 0.2, 0.1], np.float32)), {}, r"p_clean must be finite.*entry 2"),
    (dict(p_clean=np.array([0.9, 1.5, 0.5, 0.2, 0.1], np.float32)), {}, r"in \[0, 1\]; entry 1 is 1.5"),
    (dict(suggested=np.array([0, 3, 1, 0, 1])), {}, r"suggested must lie in \[0, 3\).*entry 1 is 3"),
    ({}, dict(given=np.array([0, 1, 1, 2, -1])), r"given must lie in \[0, 3\).*entry 4 is -1"),
    ({}, dict(class_names=["cat", "dog"]), r"given must lie in \[0, 2\) \(num_classes = len\(class_names\) = 2\)"),
    ({}, dict(clean_labels=np.array([0, 1, 2])), r"clean_labels has 3 entries, expected 5"),
    ({}, dict(ids=np.array(["a"])), r"ids has 1 entries, expected 5"),
    (dict(is_clean=np.array([0.5, 1, 0, 0, 0])), {}, r"is_clean must be bool"),
])
def test_bad_inputs_raise_errors_naming_the_problem(override, kwargs, message):
  args = dict(given=GIVEN, class_names=NAMES)
  args.update(kwargs)
  with pytest.raises(ReportInputError, match=message):
    label_issues_table(_detection(**override), **args)


def test_missing_detection_key_lists_what_is_there():
  det = _detection()
  del det["suggested"]
  with pytest.raises(ReportInputError, match=r"lacks \['suggested'\]; it has \['is_clean', 'margin', 'p_clean'\]"):
    label_issues_table(det, given=GIVEN, class_names=NAMES)
