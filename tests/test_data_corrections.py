"""data.corrections: a reviewer's corrections.csv checked against the train split, then applied (relabel, drop);
a file that does not fit stops the run with one line, exit 2, and nothing written."""

import numpy as np
import pytest

from conftest import SHRUNK_DEMO, SHRUNK_OVERRIDES, run_main
from deft_jax.data import corrections
from deft_jax.data.splits import BytesReader, LabeledSplit

HEADER = "index,id,given_label,new_label,action\n"


def _split(n=6):
  names = [f"img/{i}.png" for i in range(n)]
  reader = BytesReader.from_encoded([bytes([i]) for i in range(n)], names)
  return LabeledSplit(name="t/train", class_names=["cat", "dog", "ship"], labels=np.arange(n) % 3,
                      clean_labels=np.zeros(n, np.int32), ids=names, reader=reader)


def _apply(tmp_path, text, split=None):
  path = tmp_path / "corrections.csv"
  path.write_text(HEADER + text)
  split = split or _split()
  return corrections.apply(split, corrections.plan(split, path))


def test_relabel_drop_and_keep_by_index_or_id(tmp_path):
  out = _apply(tmp_path, "1,img/1.png,dog,ship,relabel\n,img/4.png,,cat,relabel\n2,,,,drop\n"
                         "3,img/3.png,cat,,keep\n5,,,1,relabel\n")
  # labels were [0, 1, 2, 0, 1, 2]; 1 -> ship, 4 -> cat, 5 -> class 1 (dog); 2 dropped
  assert list(out.ids) == ["img/0.png", "img/1.png", "img/3.png", "img/4.png", "img/5.png"]
  assert out.labels.tolist() == [0, 2, 0, 0, 1]
  assert out.clean_labels.tolist() == [0] * 5  # the truth stays the truth
  assert out.corrections == {"file": str(tmp_path / "corrections.csv"), "rows": 5, "applied": 5, "relabeled": 3,
                             "changed": 3, "dropped": 1, "kept": 1}
  assert out.noise_report.summary().startswith("given noise")
  assert out.noise_rate() == pytest.approx(2 / 5)  # ground truth against the corrected labels


@pytest.mark.parametrize("text, says", [
    ("6,,,,drop\n", "unknown index 6"),
    (",img/9.png,,,drop\n", "unknown id / path 'img/9.png'"),
    ("1,,,horse,relabel\n", "unknown class 'horse'"),
    ("1,,,,keep\n,img/1.png,,,drop\n", "line 3: example 1 (img/1.png) was already decided on line 2"),
    ("1,img/2.png,,,keep\n", "index 1 is 'img/1.png', not 'img/2.png'"),
    ("1,,,,rename\n", "action 'rename' is not one of"),
    ("1,,,,relabel\n", "relabel without a new_label"),
])
def test_a_file_that_does_not_fit_the_data_names_the_row(tmp_path, text, says):
  with pytest.raises(corrections.CorrectionsError) as e:
    _apply(tmp_path, text)
  assert says in str(e.value)


def test_a_bad_corrections_file_stops_the_run_with_one_line_and_nothing_written(tmp_path):
  fixes = tmp_path / "corrections.csv"
  fixes.write_text(HEADER + "3,,,,keep\n999,,,,drop\n")
  workdir = tmp_path / "w"
  proc = run_main(workdir, *SHRUNK_OVERRIDES, f"--config.data.corrections={fixes}", config=SHRUNK_DEMO, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("deft_jax: error: ")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "line 3: unknown index 999; the train split has 256 examples" in errors[0]
  assert not workdir.exists() or not any(workdir.iterdir()), list(workdir.iterdir())
