"""The command line's failure mode: every mistake in flags, config file, config argument or override is one line
on stderr that names it, exit status 2, no traceback, and the workdir untouched."""

import subprocess
import sys

import pytest

from conftest import REPO, main_env

CASES = {
    "unknown_field": (["--config=configs/demo.py:runlocal", "--config.detect.epochz=3"],
                      ["unknown config field 'detect.epochz'", "epochs"]),
    "unknown_section": (["--config=configs/demo.py", "--config.detct.epochs=3"],
                        ["unknown config field 'detct.epochs'", "detect"]),
    "typo_in_config_argument": (["--config=configs/demo.py:runlocl"], ["runlocl", "runlocal"]),
    "bad_value": (["--config=configs/demo.py", "--config.detect.epochs=abc"], ["detect.epochs", "abc"]),
    "missing_config_file": (["--config=configs/nope.py"], ["no config file configs/nope.py"]),
    "extra_argument": (["--config=configs/demo.py", "extra"], ["unexpected arguments: extra"]),
    "unknown_flag": (["--config=configs/demo.py", "--bogus=1"], ["bogus"]),
    "missing_config_flag": ([], ["--config"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_command_line_is_one_line_exit_2_and_leaves_the_workdir_alone(name, tmp_path):
  args, needles = CASES[name]
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("earlier results")
  cmd = [sys.executable, "-m", "deft_jax.main", *args, f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=REPO, env=main_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("deft_jax: error: "), lines
  assert "Traceback" not in proc.stderr and proc.stdout == ""
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert sorted(p.name for p in workdir.iterdir()) == ["keep.txt"]
  assert (workdir / "keep.txt").read_text() == "earlier results"


def test_explain_names_the_override_against_the_config_it_would_change(monkeypatch):
  from deft_jax import cli
  monkeypatch.chdir(REPO)
  argv = ["prog", "--config=configs/demo.py", "--config.report.nonsense", "1"]
  message = cli.explain(ValueError("whatever absl said"), argv)
  assert message.startswith("unknown config field 'report.nonsense' (--config.report.nonsense=1): report has ")
  from deft_jax import config_lib
  fields = sorted(config_lib.from_file("configs/demo.py").report.keys())
  assert message.endswith(", ".join(fields))
