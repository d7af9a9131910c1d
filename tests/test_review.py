"""The review page (report/review.html) in a real browser, and the corrections it exports going back into a run.

Headless Chromium driven by Selenium opens the page of the shrunk demo (conftest.SHRUNK_DEMO with thumbnails):
the thumbnail count, a class pair's filter, three decisions by mouse and three by keyboard kept over a reload,
and "export" writing corrections.csv; a rerun with that file changes exactly those labels. Outside CI the
browser tests skip when Chromium or its driver is missing; under CI=true they fail instead.

DEFT_JAX_REVIEW_SCREENSHOT=<png> also saves a screenshot of the demo's page after the six decisions (how
docs/review_page.png is made: `DEFT_JAX_REVIEW_SCREENSHOT=docs/review_page.png python -m pytest -n 0
tests/test_review.py -k kept`).
"""

import csv
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHRUNK_DEMO, SHRUNK_OVERRIDES, run_main

OVERRIDES = (*SHRUNK_OVERRIDES, "--config.report.write_images=True", "--config.stages=('pretrain','detect')")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def _need_browser():
  try:
    import selenium  # noqa: F401
  except ImportError:
    selenium = None
  binary = shutil.which("chromium") or shutil.which("chromium-browser")
  driver = shutil.which("chromedriver")
  if selenium is None or not binary or not driver:
    why = f"headless Chromium needed (chromium: {binary}, chromedriver: {driver}, selenium: {selenium is not None})"
    if os.environ.get("CI"):
      pytest.fail(why + "; .ci/run installs them")
    pytest.skip(why)
  return binary, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  """(driver, download folder): headless Chromium with a fresh profile."""
  binary, driver_path = _need_browser()
  from selenium import webdriver
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service

  downloads = tmp_path_factory.mktemp("downloads")
  opts = Options()
  opts.binary_location = binary
  for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
    opts.add_argument(flag)
  opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                         "download.prompt_for_download": False})
  driver = webdriver.Chrome(service=Service(driver_path), options=opts)
  driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
  yield driver, downloads
  driver.quit()


def _open(driver, page: Path) -> float:
  """Opens the page and waits for its script to finish; returns the seconds that took."""
  t0 = time.perf_counter()
  driver.get(page.resolve().as_uri())
  _wait(lambda: driver.execute_script("return window.deftReviewReady === true"), "the page's script")
  return time.perf_counter() - t0


def _wait(cond, what: str, timeout: float = 30.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = cond()
    if value:
      return value
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def _visible(driver) -> list[tuple[int, int, int]]:
  """(index, given, suggested) of the rows the filters show, in page order."""
  return driver.execute_script(
      "return Array.from(document.querySelectorAll('#rows tbody tr:not(.hidden)')).map("
      "tr => [Number(tr.dataset.i), Number(tr.dataset.g), Number(tr.dataset.s)])")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The shrunk demo (pretrain + detect) with thumbnails: its workdir and report table."""
  from deft_jax.report import load_report
  workdir = tmp_path_factory.mktemp("review") / "run"
  run_main(workdir, *OVERRIDES, config=SHRUNK_DEMO)
  table, _, summary = load_report(workdir / "report")
  return workdir, table, summary


def _row(driver, index: int):
  from selenium.webdriver.common.by import By
  return driver.find_element(By.CSS_SELECTOR, f"#rows tbody tr[data-i='{index}']")


@pytest.fixture(scope="module")
def reviewed(demo_run, browser):
  """The demo's page driven as a reviewer would: what it showed, and the corrections.csv it exported."""
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  workdir, table, summary = demo_run
  driver, downloads = browser
  page = workdir / "report" / "review.html"
  seen = {"seconds": _open(driver, page), "bytes": page.stat().st_size}
  seen["thumbs"] = len(driver.find_elements(By.CSS_SELECTOR, "#rows img.thumb"))
  seen["placeholders"] = len(driver.find_elements(By.CSS_SELECTOR, "#rows .ph"))
  pair = driver.find_elements(By.CSS_SELECTOR, "#pairs tr.pair")[1]  # not the first: any pair must work
  seen["pair"] = (int(pair.get_attribute("data-g")), int(pair.get_attribute("data-s")),
                  int(pair.find_elements(By.TAG_NAME, "td")[1].text))
  pair.click()
  seen["pair_rows"] = _visible(driver)
  driver.find_element(By.ID, "clear").click()
  first = [i for i, _, _ in _visible(driver)[:6]]
  other = next(k for k in range(len(summary["per_class"])) if k not in (table.set_index("index").loc[first[2],
                                                                        ["given_label", "predicted_label"]]))
  _row(driver, first[0]).find_element(By.CSS_SELECTOR, "button[data-a='relabel']").click()  # the mouse
  _row(driver, first[1]).find_element(By.CSS_SELECTOR, "button[data-a='drop']").click()
  other_select = _row(driver, first[2]).find_element(By.CSS_SELECTOR, "select.other")
  other_select.click()  # the class list is filled on first use
  Select(other_select).select_by_value(str(other))
  _row(driver, first[3]).find_element(By.CSS_SELECTOR, "td.id").click()  # the keyboard, from the fourth row
  ActionChains(driver).send_keys("k").send_keys("r").send_keys("d").perform()
  driver.refresh()
  _wait(lambda: driver.execute_script("return window.deftReviewReady === true"), "the reloaded page")
  seen["after_reload"] = {i: _row(driver, i).find_element(By.CSS_SELECTOR, "td.dec").text for i in first}
  if os.environ.get("DEFT_JAX_REVIEW_SCREENSHOT"):
    driver.set_window_size(1280, 820)
    driver.save_screenshot(os.environ["DEFT_JAX_REVIEW_SCREENSHOT"])
  driver.find_element(By.ID, "export").click()
  exported = _wait(lambda: (downloads / "corrections.csv").exists() and downloads / "corrections.csv", "the export")
  time.sleep(0.3)  # the download is renamed into place once written
  seen["csv"] = list(csv.DictReader(exported.open()))
  seen["first"], seen["other"] = first, other
  shutil.copy(exported, workdir.parent / "corrections.csv")
  print(f"\nreview page of the shrunk demo: {seen['bytes'] / 1e6:.2f} MB, opened in {seen['seconds']:.2f} s")
  return seen


def test_the_page_shows_every_suspect_with_its_thumbnail(demo_run, reviewed):
  _, table, _ = demo_run
  assert len(table) == 256  # fewer than review_top_k: every row
  assert reviewed["thumbs"] == 256 and reviewed["placeholders"] == 0


def test_a_class_pair_shows_exactly_its_rows(demo_run, reviewed):
  _, table, summary = demo_run
  g, s, n = reviewed["pair"]
  assert {"given_label": g, "predicted_label": s, "count": n}.items() <= next(
      p for p in summary["confused_pairs"] if (p["given_label"], p["predicted_label"]) == (g, s)).items()
  want = table[(table.given_label == g) & (table.predicted_label == s)]["index"].tolist()  # table order = rank
  assert [i for i, _, _ in reviewed["pair_rows"]] == want and n <= len(want)


def test_decisions_by_mouse_and_keyboard_are_kept_after_a_reload_and_exported(demo_run, reviewed):
  _, table, summary = demo_run
  names = [c["name"] for c in summary["per_class"]]
  by = table.set_index("index")
  first, other = reviewed["first"], reviewed["other"]
  want = {first[0]: ("relabel", names[by.predicted_label[first[0]]]), first[1]: ("drop", ""),
          first[2]: ("relabel", names[other]), first[3]: ("keep", ""),
          first[4]: ("relabel", names[by.predicted_label[first[4]]]), first[5]: ("drop", "")}
  shown = {i: (a, f"relabel \u2192 {label}" if a == "relabel" else a) for i, (a, label) in want.items()}
  assert reviewed["after_reload"] == {i: text for i, (_, text) in shown.items()}
  rows = reviewed["csv"]
  assert [int(r["index"]) for r in rows] == sorted(want)
  for r in rows:
    i = int(r["index"])
    assert (r["action"], r["new_label"]) == want[i], r
    assert r["id"] == by.id[i] and r["given_label"] == names[by.given_label[i]], r


def test_a_rerun_with_the_exported_corrections_changes_exactly_those_labels(demo_run, reviewed, tmp_path):
  from deft_jax.report import load_report
  workdir, table, summary = demo_run
  fixes = pd.read_csv(workdir.parent / "corrections.csv", keep_default_na=False)
  rerun = tmp_path / "rerun"
  rerun.mkdir()
  shutil.copytree(workdir / "pretrain", rerun / "pretrain")  # the same CLIP: the rerun skips pretraining
  run_main(rerun, *OVERRIDES, f"--config.data.corrections={workdir.parent / 'corrections.csv'}", config=SHRUNK_DEMO)
  after, _, summary2 = load_report(rerun / "report")
  names = [c["name"] for c in summary["per_class"]]
  before = table.set_index("id").given_label
  now = after.set_index("id").given_label
  expected = before.copy()
  for r in fixes.itertuples():
    if r.action == "relabel":
      expected[r.id] = names.index(r.new_label)
  expected = expected.drop([r.id for r in fixes.itertuples() if r.action == "drop"])
  assert len(after) == len(table) - 2
  assert now.sort_index().equals(expected.sort_index())
  assert summary2["corrections"]["applied"] == 6 and summary2["corrections"]["dropped"] == 2
  assert summary2["corrections"]["relabeled"] == 3 and summary2["corrections"]["kept"] == 1
  truth = after.true_label.to_numpy()
  assert summary2["detection"]["true_noise_rate"] == pytest.approx(np.mean(after.given_label.to_numpy() != truth))
  assert "corrections applied: 6 rows" in (rerun / "report" / "summary.txt").read_text()


def _png(path: Path, seed: int, size: int = 96) -> None:
  from PIL import Image
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)).save(path)


def _table(n: int, c: int = 4, seed: int = 0) -> pd.DataFrame:
  """A ranked label-issues table of n rows, as find_label_issues returns it."""
  rng = np.random.default_rng(seed)
  names = [f"class {k}" for k in range(c)]
  given, sugg = rng.integers(0, c, n), rng.integers(0, c, n)
  score = np.sort(rng.random(n))
  df = pd.DataFrame({"index": rng.permutation(n), "id": [f"img_{i}.png" for i in range(n)], "given_label": given,
                     "given_name": [names[k] for k in given], "predicted_label": sugg,
                     "predicted_name": [names[k] for k in sugg], "label_score": score,
                     "is_label_issue": score < 0.5, "p_clean": score, "margin": score - 0.5})
  return df


def test_each_class_pair_and_class_filter_shows_exactly_its_rows(browser, tmp_path):
  """On a table where a given class has several suggestions (the shrunk demo's CLIP suggests one class for all)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select

  from deft_jax import api
  driver, _ = browser
  table = _table(80, c=3, seed=1)
  _open(driver, api.review(table, None, tmp_path / "review.html"))
  pairs = driver.find_elements(By.CSS_SELECTOR, "#pairs tr.pair")
  flagged = table[table.is_label_issue & (table.given_label != table.predicted_label)]
  assert len(pairs) == len(flagged.groupby(["given_label", "predicted_label"])) == 6
  for k in range(len(pairs)):
    pair = driver.find_elements(By.CSS_SELECTOR, "#pairs tr.pair")[k]
    g, s = int(pair.get_attribute("data-g")), int(pair.get_attribute("data-s"))
    assert int(pair.find_elements(By.TAG_NAME, "td")[1].text) == int(
        ((flagged.given_label == g) & (flagged.predicted_label == s)).sum())
    pair.click()
    want = table[(table.given_label == g) & (table.predicted_label == s)]["index"].tolist()
    assert [i for i, _, _ in _visible(driver)] == want
  driver.find_element(By.ID, "clear").click()
  Select(driver.find_element(By.ID, "f-sugg")).select_by_value("2")
  assert [i for i, _, _ in _visible(driver)] == table[table.predicted_label == 2]["index"].tolist()
  Select(driver.find_element(By.ID, "sort")).select_by_value("desc")
  assert [i for i, _, _ in _visible(driver)] == table[table.predicted_label == 2]["index"].tolist()[::-1]


def test_missing_or_corrupt_thumbnail_sources_show_placeholders_and_the_page_still_works(browser, tmp_path):
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By

  from deft_jax import api
  driver, _ = browser
  paths = [tmp_path / f"img_{i}.png" for i in range(6)]
  for i, p in enumerate(paths):
    _png(p, i)
  paths[2].unlink()  # removed after the run
  paths[4].write_bytes(b"not a png at all")  # damaged
  table = _table(6)
  page = api.review(table, paths, tmp_path / "review.html")
  _open(driver, page)
  ph = [int(e.get_attribute("data-i")) for e in driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr")
        if e.find_elements(By.CSS_SELECTOR, ".ph")]
  assert sorted(ph) == [2, 4]
  assert len(driver.find_elements(By.CSS_SELECTOR, "#rows img.thumb")) == 4
  _row(driver, 2).find_element(By.CSS_SELECTOR, "td.id").click()
  ActionChains(driver).send_keys("d").perform()
  assert _row(driver, 2).find_element(By.CSS_SELECTOR, "td.dec").text == "drop"


def test_a_page_of_1000_suspects_weighs_under_10_mb(browser, tmp_path):
  """1,000 real images (the demo's CIFAR-10, enlarged to 96 px so that each thumbnail is full size) of 1,200
  rows; the opening time is printed, not asserted (the machine's load decides it)."""
  from PIL import Image
  from selenium.webdriver.common.by import By

  from deft_jax import api
  from deft_jax.data import datasets
  driver, _ = browser
  train = datasets.get_dataset({"source": "demo", "train_indices": "0:1200"})["train"]
  small = train.load_images(np.arange(1200))
  images = np.stack([np.asarray(Image.fromarray(im).resize((96, 96), Image.BICUBIC)) for im in small])
  table = _table(1200, c=10)
  page = api.review(table, images, tmp_path / "review.html", class_names=train.class_names)
  size = page.stat().st_size
  seconds = _open(driver, page)
  print(f"\n1,000-suspect review page: {size / 1e6:.2f} MB, opened in {seconds:.2f} s in headless Chromium")
  assert len(driver.find_elements(By.CSS_SELECTOR, "#rows img.thumb")) == 1000
  assert size < 10e6
