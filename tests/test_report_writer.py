"""Writing the report directory (deft_jax.report.writer): contents, CSV ranking, atomic replacement."""

import json

import numpy as np
import pandas as pd
import pytest

from deft_jax.report import build_and_write_report, load_report, recover, writer

NAMES = ["NA", "dog", "bird"]  # "NA" must survive the CSV round trip as a name, not a missing value


def _inputs(seed=0, n=12):
  rng = np.random.default_rng(seed)
  given = rng.integers(0, 3, n).astype(np.int32)
  truth = np.where(rng.random(n) < 0.7, given, rng.integers(0, 3, n)).astype(np.int32)
  p = rng.random(n).astype(np.float32)
  det = dict(p_clean=p, is_clean=p > 0.5, suggested=rng.integers(0, 3, n).astype(np.int32),
             margin=(p - 0.5).astype(np.float32))
  return det, given, truth


def _images(indices):
  return np.full((len(indices), 32, 32, 3), 128, np.uint8)


def _write(report_dir, seed=0, **kwargs):
  det, given, truth = _inputs(seed)
  return build_and_write_report(report_dir, det, given=given, class_names=NAMES, clean_labels=truth,
                                ids=np.array([f"img_{i}.jpg" for i in range(len(given))]), **kwargs)


def test_report_directory_holds_every_artifact(tmp_path):
  _write(tmp_path / "report", image_fn=_images, extra_summary={"test_accuracy": 0.5})
  files = {p.name for p in (tmp_path / "report").iterdir()}
  assert files == {"label_issues.csv", "clean_mask.npy", "summary.json", "summary.txt", "suspects.png",
                   "p_clean_hist.png", "class_noise.png", "review.html"}
  assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging or backup left behind
  assert json.loads((tmp_path / "report" / "summary.json").read_text())["test_accuracy"] == 0.5


def _page_data(path) -> dict:
  text = path.read_text()
  start = text.index('<script type="application/json" id="review-data">') + len(
      '<script type="application/json" id="review-data">')
  return json.loads(text[start:text.index("</script>", start)])


def test_review_page_holds_the_top_k_rows_of_the_table_and_no_page_without_k(tmp_path):
  table, summary, _ = _write(tmp_path / "r", image_fn=_images, review_top_k=3)
  data = _page_data(tmp_path / "r" / "review.html")
  assert [r["i"] for r in data["rows"]] == table["index"].tolist()[:3]
  assert [r["g"] for r in data["rows"]] == table["given_label"].tolist()[:3]
  assert all(r["t"].startswith("data:image/jpeg;base64,") for r in data["rows"])
  assert data["class_names"] == list(NAMES)
  assert [(p["g"], p["s"], p["n"]) for p in data["pairs"]] == [
      (p["given_label"], p["predicted_label"], p["count"]) for p in summary["confused_pairs"]]
  _write(tmp_path / "none", review_top_k=None)
  assert not (tmp_path / "none" / "review.html").exists()


def test_csv_is_ranked_worst_first_with_expected_columns(tmp_path):
  det, given, truth = _inputs()
  _write(tmp_path / "r")
  csv = pd.read_csv(tmp_path / "r" / "label_issues.csv", keep_default_na=False)
  assert list(csv.columns) == ["index", "id", "given_label", "given_name", "predicted_label", "predicted_name",
                               "label_score", "is_label_issue", "p_clean", "margin", "true_label", "true_name"]
  np.testing.assert_array_equal(csv["index"], np.argsort(det["p_clean"], kind="stable"))
  np.testing.assert_allclose(csv["label_score"], np.sort(det["p_clean"]), rtol=1e-6)
  np.testing.assert_array_equal(csv["is_label_issue"], ~det["is_clean"][csv["index"]])
  assert (csv["id"] == [f"img_{i}.jpg" for i in csv["index"]]).all()


def test_load_report_round_trips_table_mask_and_summary(tmp_path):
  table, summary, text = _write(tmp_path / "r")
  t2, mask, s2 = load_report(tmp_path / "r")
  det, _, _ = _inputs()
  np.testing.assert_array_equal(mask, det["is_clean"])
  assert s2 == summary
  assert (t2["given_label"] == 0).any()  # so the class named "NA" is in the CSV
  assert t2["given_name"].tolist() == table["given_name"].tolist()
  pd.testing.assert_series_equal(t2["label_score"], table["label_score"].astype(float), check_dtype=False,
                                 rtol=1e-6)
  assert (tmp_path / "r" / "summary.txt").read_text().strip() == text


def test_crash_mid_write_keeps_previous_report_intact(tmp_path, monkeypatch):
  report = tmp_path / "report"
  _write(report, seed=0)
  before = {p.name: p.read_bytes() for p in report.iterdir()}

  def boom(*args, **kwargs):
    raise RuntimeError("disk full while plotting")

  monkeypatch.setattr(writer.plots, "class_noise_figure", boom)  # after CSV, mask and JSON are written
  with pytest.raises(RuntimeError, match="disk full"):
    _write(report, seed=1)
  assert {p.name: p.read_bytes() for p in report.iterdir()} == before
  assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_new_report_replaces_old_only_when_complete(tmp_path):
  report = tmp_path / "report"
  _write(report, seed=0, image_fn=_images)
  _write(report, seed=1)  # no images this time: the old suspects.png must not linger
  _, mask, _ = load_report(report)
  np.testing.assert_array_equal(mask, _inputs(1)[0]["is_clean"])
  assert not (report / "suspects.png").exists()


def test_interrupted_swap_is_recovered_from_backup(tmp_path):
  report = tmp_path / "report"
  _write(report, seed=0)
  original = (report / "label_issues.csv").read_bytes()
  # State after a crash between the two renames: report moved to its backup, staging half-written.
  report.rename(tmp_path / ".report.old-deadbeef")
  (tmp_path / ".report.tmp-cafe").mkdir()
  with pytest.raises(FileNotFoundError, match="call recover"):
    load_report(report)
  recover(report)
  assert (report / "label_issues.csv").read_bytes() == original
  assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_write_report_rejects_mask_that_disagrees_with_table(tmp_path):
  table, summary, _ = _write(tmp_path / "r")
  wrong = ~load_report(tmp_path / "r")[1]
  with pytest.raises(ValueError, match="disagrees"):
    writer.write_report(tmp_path / "r2", table=table, clean_mask=wrong, summary=summary)
  with pytest.raises(ValueError, match="clean_mask has 3 entries but the table has 12 rows"):
    writer.write_report(tmp_path / "r2", table=table, clean_mask=np.ones(3, bool), summary=summary)
  assert not (tmp_path / "r2").exists()


def test_arrays_given_as_npy_paths_are_copied_exactly_and_checked_for_rows(tmp_path):
  """Old behaviour caught: the report took only arrays, read each exported [N, C] one into memory and saved it
  again (a path failed); a path is now copied as a file (exact bytes), and a file whose rows do not match the
  table is still refused."""
  probs = np.random.default_rng(0).random((12, 5)).astype(np.float32)
  np.save(tmp_path / "src.npy", probs)
  out = tmp_path / "report"
  _write(out, arrays={"pred_probs.npy": tmp_path / "src.npy"})
  assert (out / "pred_probs.npy").read_bytes() == (tmp_path / "src.npy").read_bytes()
  np.save(tmp_path / "short.npy", probs[:5])
  with pytest.raises(writer.ReportInputError, match="pred_probs.npy has 5 rows"):
    _write(tmp_path / "report2", arrays={"pred_probs.npy": tmp_path / "short.npy"})
