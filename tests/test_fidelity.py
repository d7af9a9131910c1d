"""The reference's recipe, item by item (docs/FIDELITY.md). Each test names, in its docstring, the behaviour it
replaced, and fails on it."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from clu import metric_writers

from conftest import REPO, tiny_config
from deft_jax import adapt, baselines, config_lib, loop, optim, run
from deft_jax.adapt import methods
from deft_jax.adapt import train as adapt_train
from deft_jax.baselines import _common, _gmm_fit
from deft_jax.baselines import gmm
from deft_jax.checkpoint import StageCheckpointer
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data import cifar_offline, preprocess
from deft_jax.detect import train as detect_train
from deft_jax.detect.detector import Detector
from deft_jax.errors import ConfigError, DivergedError
from deft_jax.models import clip as clip_lib
from deft_jax.models import peft as peft_lib
from deft_jax.models import prompts as prompts_lib
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.tree import flatten
from deft_jax.report import auroc
from deft_jax.report import metrics as report_metrics
from deft_jax.report.inputs import check_inputs
from deft_jax.report.summary import summary_from_inputs
from deft_jax.report.table import table_from_inputs

N_TRAIN, N_TEST, B = 20, 13, 8


@pytest.fixture(scope="module")
def splits():
  s = cifar_offline.load_demo(train_indices=f"0:{N_TRAIN}", test_size=N_TEST)
  return {"train": s["train"], "test": s["test"]}


# ------------------------------------------------------------------------------------------------ numbers

def test_nan_logits_are_an_error_naming_the_stage_and_equal_logits_are_not_all_correct():
  """Was: NaN or all-equal logits gave top-1 = 1.0 (ties counted for the label), so a diverged phase 2
  reported 100 %."""
  labels = np.arange(10)
  with pytest.raises(DivergedError, match="adapt, test split.*not finite"):
    report_metrics.classification_metrics(labels, logits=np.full((10, 10), np.nan), num_classes=10,
                                          stage="adapt, test split")
  zeros = report_metrics.classification_metrics(labels, logits=np.zeros((10, 10)), num_classes=10, topk=(1, 5))
  assert zeros["top1"] == pytest.approx(0.1)  # argmax is class 0: only the example labelled 0 is right
  assert zeros["top5"] == pytest.approx(0.5)


def _toy_step(bad_step):
  def step(state, batch):
    del batch
    s = state["step"] + 1
    loss = jnp.where(s == bad_step, jnp.nan, 1.0 / s)
    return {"step": s, "w": state["w"] + loss}, {"loss": loss}
  return jax.jit(step)


def test_a_nan_loss_stops_the_loop_and_keeps_the_last_good_checkpoint(tmp_path, mesh1):
  """Was: no guard; training went on from a NaN state, checkpointed it and wrote outputs from it."""
  ckpt = StageCheckpointer(tmp_path / "ckpt", every_steps=2, async_save=False)
  cfg = loop.LoopConfig("detect", num_epochs=2, steps_per_epoch=4, log_every_steps=3, checkpoint_every_steps=2)
  ends = []

  def batches(epoch, start):
    return iter([{"x": np.zeros((1,), np.float32)}] * (4 - start))

  state = {"step": jnp.int32(0), "w": jnp.float32(0)}
  with pytest.raises(DivergedError, match=r"\[detect\] the loss is nan at step 5 of 8 \(epoch 2\).*step 4"):
    loop.run(cfg, state, _toy_step(5), batches, mesh=mesh1, writer=metric_writers.LoggingWriter(),
             checkpointer=ckpt, on_epoch_end=lambda st, e: ends.append(e))
  assert ckpt.latest_step() == 4  # step 6 (a NaN state) was never saved
  assert ends == [0]  # the second epoch's hook never saw the broken state


def test_a_diverged_run_exits_2_and_writes_no_mask_or_report(tmp_path):
  """Was: a NaN loss ran to the end and wrote detection.npz, the report and the clean mask from it."""
  from conftest import run_main
  proc = run_main(tmp_path, "--config.stages=('detect',)", "--config.model.checkpoint=",
                  "--config.model.preset=tiny", "--config.detect.schedule.lr=1e30",
                  "--config.data.train_indices=0:64", "--config.detect.epochs=1",
                  config="configs/demo.py:runlocal", check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "training diverged" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "detect" / "detection.npz").exists()
  assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------------------------------------ phase 1

def _detector(config, mesh, n=N_TRAIN, spe=3):
  return Detector(config, class_names=[f"class {i}" for i in range(5)], num_examples=n, mesh=mesh, checkpoint=None,
                  steps_per_epoch=spe)


def test_real_world_pseudo_labels_start_in_the_second_epoch(mesh1, monkeypatch):
  """Was: pseudo_label_start_epoch=2 compared with 0-based epochs, so pseudo-labels started in the 3rd epoch."""
  from deft_jax.detect import step as detect_step
  c = config_lib.real_world(tiny_config())
  assert config_lib.phase1_recipe(c)["pseudo_labels_from_epoch"] == 2 and "pseudo_label_start_epoch" not in c.detect
  det = _detector(c, mesh1, spe=3)
  assert det.settings.pseudo_label_start_epoch == 1  # 0-based index of the 2nd epoch
  # The phase-1 loss itself, step by step: L_neg takes pseudo-labels in every batch of the 2nd epoch and after
  # (steps 3, 4, 5, ... at 3 steps per epoch), never in the 1st; the warm-up loss covers the 5 warm-up epochs.
  flags = []
  monkeypatch.setattr(detect_step, "logits", lambda *a, **k: (None, None))
  monkeypatch.setattr(detect_step.losses, "deft_loss",
                      lambda *a, warmup, pseudo_labels, **k: flags.append((warmup, pseudo_labels)))
  batch = dict(image=None, label=None, mask=None)
  for step in range(18):
    detect_step.loss_fn(None, batch, None, step, model=None, template=None, settings=det.settings)
  assert [p for _, p in flags] == [False] * 3 + [True] * 15
  assert [w for w, _ in flags] == [True] * 15 + [False] * 3
  with pytest.raises(ValueError, match="counts epochs from 1"):
    c.detect.pseudo_labels_from_epoch = 0
    _detector(c, mesh1)


def test_learned_params_hold_exactly_the_trained_leaves_bitfit_included(mesh1, tmp_path):
  """Was: learned_params.npz was chosen by name substrings, so BitFit biases (and anything detect.trainable
  named) were dropped and adapt.method='none' silently used the pretrained values."""
  c = tiny_config(detect=dict(peft=dict(vpt="deep", vpt_tokens=2, bitfit=True)))
  det = _detector(c, mesh1)
  state = det.init_state(jax.random.key(0))
  trained = {k for k, m in flatten(det.mask).items() if m}
  assert any(k.endswith("/bias") for k in trained)
  params = jax.tree.map(lambda x: x + 0.5, jax.device_get(state["params"]))
  detect_train.save_learned_params(tmp_path / "learned.npz", params, det.mask)
  with np.load(tmp_path / "learned.npz") as f:
    saved = {k: f[k] for k in f.files}
  assert set(saved) == trained
  flat = flatten(params)
  for k in trained:
    np.testing.assert_array_equal(saved[k], flat[k])


def test_phase1_cosine_is_constant_within_an_epoch():
  """Was: detect.schedule.per_epoch=False (the lr changed every step); the reference steps its cosine per epoch."""
  c = config_lib.base_config()
  assert c.detect.schedule.per_epoch and c.baselines.schedule.per_epoch
  schedule = dict(c.detect.schedule, decay=config_lib.phase1_recipe(c)["schedule_decay"])  # the synthetic recipe's
  lr = optim.make_schedule(schedule, total_steps=30, steps_per_epoch=3)
  values = [float(lr(s)) for s in range(30)]
  for e in range(10):
    assert values[3 * e] == values[3 * e + 2] == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * e / 10)))


def test_class_name_and_period_are_tokenised_as_one_string():
  """Was: tokens(name) + tokens("."), which differ from tokens("name.") where BPE merges the name's last
  punctuation with the period (")." is one token)."""
  tok = Tokenizer()
  name = "chevrolet corvette zr1 (c6)"
  assert tok.encode(name + ".") != tok.encode(name) + tok.encode(".")
  t = prompts_lib.build_template([name, "dog"], tok, n_ctx=3)
  row = t.ids[0, : t.eot[0] + 1].tolist()
  assert row == [tok.bos_id] + tok.encode(prompts_lib.PLACEHOLDER) * 3 + tok.encode(name + ".") + [tok.eos_id]
  front = prompts_lib.build_template([name], tok, n_ctx=2, position="front")
  want = tok.encode(name + ".")
  n = len(tok.encode(name))
  assert front.ids[0, 1: front.eot[0]].tolist() == want[:n] + tok.encode(prompts_lib.PLACEHOLDER) * 2 + want[n:]


def test_label_score_does_not_saturate_at_a_real_clip_logit_scale():
  """Was: label_score = p_clean = sigmoid(margin), which is exactly 1.0 (or 0.0) in float32 once |margin| > ~17:
  with CLIP's logit scale 100 the ranked table and the AUROC tied exactly where the model is confident."""
  rng = np.random.default_rng(0)
  n = 2000
  cos_margin = rng.uniform(-0.6, 0.6, n)  # cos(x, pos_y) - cos(x, neg_y)
  margin = (100.0 * cos_margin).astype(np.float32)
  p_clean = jax.device_get(jax.nn.sigmoid(jnp.asarray(margin)))
  assert np.unique(p_clean).size < n * 0.9  # the saturation is real
  score = detect_train.label_score(margin, 100.0)
  assert np.unique(score).size == np.unique(margin).size  # no ties beyond the margin's own
  assert ((score >= 0) & (score <= 1)).all()
  assert (np.diff(score[np.argsort(margin)]) >= 0).all()  # monotone in the margin
  np.testing.assert_array_equal(score > 0.5, margin > 0)  # the same decision as p_clean > 0.5
  given = rng.integers(0, 3, n)
  clean = np.where(rng.random(n) < 1 / (1 + np.exp(-10 * cos_margin)), given, (given + 1) % 3)
  det = {"p_clean": p_clean, "is_clean": margin > 0, "suggested": given.astype(np.int32), "margin": margin,
         "label_score": score, "score": margin}
  inputs = check_inputs(det, given=given, class_names=("a", "b", "c"), clean_labels=clean)
  table = table_from_inputs(inputs)
  np.testing.assert_array_equal(table["index"].to_numpy(), np.lexsort((np.arange(n), margin)))
  summary = summary_from_inputs(inputs)
  assert summary["detection"]["auroc"] == pytest.approx(auroc(margin, given == clean))
  assert summary["detection"]["auroc"] != pytest.approx(auroc(p_clean, given == clean), abs=1e-6)


# ------------------------------------------------------------------------------------------------ models

def test_lora_scales_by_one_over_rank_and_initialises_a_like_the_reference():
  """Was: B(A(x)) unscaled and A ~ U(-1/sqrt(in), 1/sqrt(in)) (a Linear layer's default); the reference scales by
  1/r and draws A [in, r] with kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(r), 1/sqrt(r))."""
  assert peft_lib.PEFTConfig(lora_rank=4).lora_scale == 0.25
  assert config_lib.base_config().detect.peft.lora_alpha == 1.0
  rank, fan_in = 4, 256
  lora = clip_lib.LoRA(features=8, rank=rank, scale=1.0 / rank)
  x = jnp.ones((1, fan_in))
  params = lora.init(jax.random.key(0), x)["params"]
  a = np.asarray(params["lora_a"])
  assert a.shape == (fan_in, rank)
  assert np.abs(a).max() <= 1 / np.sqrt(rank) and np.abs(a).max() > 0.9 / np.sqrt(rank)
  b = np.random.default_rng(0).normal(size=(rank, 8)).astype(np.float32)
  out = lora.apply({"params": {"lora_a": a, "lora_b": b}}, x)
  np.testing.assert_allclose(out, (np.ones((1, fan_in)) @ a @ b) / rank, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ data

def _halves(h, w):
  """Left quarter red, right quarter blue, the middle grey."""
  img = np.full((h, w, 3), 128, np.uint8)
  img[:, : w // 4] = (255, 0, 0)
  img[:, -(w // 4):] = (0, 0, 255)
  return img


def _has(img, colour):
  return bool((np.abs(img.astype(int) - colour).sum(-1) < 60).any())


def test_squash_crop_and_squash_eval_keep_the_whole_frame():
  """Was: every dataset resized the short side (a 2:1 image lost its left and right ends); the reference squashes
  Tiny-ImageNet, Cars, CUB and WebVision to 256x256 before a 224 crop, and tests on a 224x224 squash."""
  src = tf.constant(_halves(100, 200))
  for k in range(5):
    seed = tf.constant([k, 1], tf.int64)
    squash = preprocess.train_transform(src, 56, "squash_crop", seed).numpy()
    short = preprocess.train_transform(src, 56, "resize_crop", seed).numpy()
    assert squash.shape == (56, 56, 3)
    assert _has(squash, (255, 0, 0)) and _has(squash, (0, 0, 255))  # 7/8 of the width
    assert not (_has(short, (255, 0, 0)) and _has(short, (0, 0, 255)))  # 7/16 of the width
  ev = preprocess.eval_transform(src, 56, "squash").numpy()
  assert ev.shape == (56, 56, 3) and (ev[:, 0] == (255, 0, 0)).all() and (ev[:, -1] == (0, 0, 255)).all()
  for name in ("cub200", "stanford_cars", "tiny_imagenet"):
    c = _load_config(name)
    assert (c.data.train_augment, c.data.eval_resize) == ("squash_crop", "squash"), name
  c = _load_config("webvision")  # tests on Resize((256, 256)) + CenterCrop(224): tests/test_fidelity_recipes.py
  assert (c.data.train_augment, c.data.eval_resize) == ("squash_crop", "squash_center_crop")
  assert _load_config("cifar100").data.train_augment == "cifar"
  assert _load_config("cifar100").data.eval_resize == "short_side"


def test_dataset_statistics_are_labelled_as_the_reference_uses_them():
  """Was: Tiny-ImageNet and Cars listed ImageNet statistics and Clothing1M had none; the reference uses CLIP's for
  the first two and (0.6959, 0.6537, 0.6371) / (0.3113, 0.3192, 0.3214) for Clothing1M."""
  assert preprocess.normalization("tiny_imagenet") == preprocess.normalization("clip")
  assert preprocess.normalization("cars") == preprocess.normalization("clip")
  assert preprocess.normalization("clothing1m") == ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214))
  assert preprocess.normalization("cub") == preprocess.normalization("imagenet")
  assert config_lib.base_config().data.normalization == "clip"


def _load_config(name, arg=None):
  return config_lib.from_file(REPO / "configs" / f"{name}.py", arg)


# ------------------------------------------------------------------------------------------------ phase 2

def test_phase2_epochs_visit_every_example_and_average_the_loss_over_the_selected(tiny_clip, splits, mesh1,
                                                                                 tmp_path):
  """Was: each epoch re-indexed the selected subset (ceil(|S|/64) steps); the reference visits all N examples
  (ceil(N/64) steps) and averages each batch's loss over its selected examples."""
  c = tiny_config(tiny_clip, adapt=dict(epochs=2))
  assert c.adapt.epoch_over == "all"
  mask = np.arange(N_TRAIN) % 4 == 0  # 5 of 20 selected
  res = adapt_train.run(c, tmp_path / "all", splits=splits, mesh=mesh1, writer=metric_writers.LoggingWriter(),
                        clip=RunCLIP(c, tiny_clip), mask=mask)
  assert res["steps"] == 2 * math.ceil(N_TRAIN / B) and res["num_selected"] == 5
  c.adapt.epoch_over = "selected"
  res = adapt_train.run(c, tmp_path / "selected", splits=splits, mesh=mesh1,
                        writer=metric_writers.LoggingWriter(), clip=RunCLIP(c, tiny_clip), mask=mask)
  assert res["steps"] == 2 * math.ceil(5 / B)


def test_small_loss_is_told_the_nominal_rate_not_the_realised_one(splits):
  """Was: the realised noise rate of the split; the reference forgets the nominal rate r (symmetric noise at
  r = 0.4 over C classes flips only r (1 - 1/C) of the labels)."""
  c = tiny_config()
  c.data.noise.update(dict(type="sym", ratio=0.4))
  assert _common.nominal_noise_rate(c, splits["train"], "small-loss") == 0.4
  assert _common.nominal_noise_rate(c, splits["train"], "small-loss", override=0.25) == 0.25
  c.data.noise.type = "none"  # real noise: the known rate of the split
  assert _common.nominal_noise_rate(c, splits["train"], "small-loss") == pytest.approx(splits["train"].noise_rate())


def test_gmm_baseline_is_the_phase2_model_fitted_like_the_reference(tiny_clip, splits, mesh1, tmp_path):
  """Was: a separate VPT + linear-head model with its own recipe, and EM to 100 iterations at tol 1e-6; the
  reference fits GaussianMixture(max_iter=10, tol=1e-2) to the losses of the same FFT model it trains and tests."""
  import inspect
  sig = inspect.signature(_gmm_fit.fit)
  assert (sig.parameters["max_iter"].default, sig.parameters["tol"].default) == (10, 1e-2)
  c = tiny_config(tiny_clip)
  assert c.baselines.gmm.model == "phase2"
  ctx = _common.Context(c, splits["train"], mesh1, RunCLIP(c, tiny_clip), "gmm", 1)
  clf, budget, optim_cfg, _ = gmm.model_and_recipe(ctx, model="phase2")
  assert clf.rules == clf_lib.clip_rules("blocks", peft_lib.PEFTConfig())  # phase 2's FFT rules
  assert optim_cfg == c.adapt.optim and budget.epochs == c.adapt.epochs
  c.adapt.epochs = 2
  out = baselines.run("gmm", c, splits["train"], mesh=mesh1, clip=RunCLIP(c, tiny_clip), workdir=tmp_path,
                      eval_splits={"test": splits["test"]})
  # The same model's test accuracy is kept with its mask: a count of right answers over the test split.
  n_test = splits["test"].num_examples
  assert np.isfinite(out["test_top1"]) and float(out["test_top1"]) * n_test == pytest.approx(
      round(float(out["test_top1"]) * n_test), abs=1e-3)
  np.testing.assert_array_equal(out["is_clean"], out["score"] > 0)  # log-odds > 0 <=> posterior > 0.5


# ------------------------------------------------------------------------------------------------ missing methods

def test_vlpt_trains_only_its_prompts_and_visual_prompts(tiny_clip, splits, mesh1, tmp_path):
  """New: VLPT (VPT + CoOp prompts, CE on the noisy labels; the paper's Fig. 1) as a phase-2 method and a
  baseline. Its prompts and VPT train; every pretrained weight stays bit-identical."""
  c = tiny_config(tiny_clip, adapt=dict(method="vlpt", train_on="all", peft=dict(vpt="deep", vpt_tokens=2)))
  c.adapt.schedule.lr = 0.03
  clf = adapt.build("vlpt", methods.Context(c, splits["train"].class_names, RunCLIP(c, tiny_clip), mesh1,
                                            jax.random.key(0)))
  before = {k: np.asarray(v) for k, v in flatten(jax.device_get(clf.variables["params"])).items()}
  tr, state = adapt_train.train_classifier(c, clf, splits["train"], np.ones(N_TRAIN, bool), mesh=mesh1,
                                           writer=metric_writers.LoggingWriter(), out_dir=tmp_path)
  after = flatten(jax.device_get(state["params"]))
  trained = {k for k, m in flatten(tr.mask).items() if m}
  assert "prompts/ctx" in trained and any(k.endswith("vpt_prompt") for k in trained)
  assert all(k == "prompts/ctx" or k.endswith("vpt_prompt") for k in trained)
  for k, v in before.items():
    assert np.array_equal(v, after[k]) != (k in trained), k
  vc = _load_config("cifar100n", "method=vlpt")
  assert vc.adapt.method == "vlpt" and vc.adapt.train_on == "all" and "detect" not in vc.stages
  bc = tiny_config(tiny_clip)
  out = baselines.run("vlpt", bc, splits["train"], mesh=mesh1, clip=RunCLIP(bc, tiny_clip))
  np.testing.assert_array_equal(out["is_clean"], out["suggested"] == splits["train"].labels)


def test_turn_keeps_what_a_linear_probe_gmm_keeps_and_phase2_trains_on_it(tiny_clip, splits, mesh1, tmp_path):
  """New: TURN (linear probe on the noisy labels, then FFT on the set it keeps; the paper's Table 4)."""
  c = tiny_config(tiny_clip, adapt=dict(train_on="turn"))
  tc = _load_config("cub200", "method=turn")
  assert tc.adapt.train_on == "turn" and tc.adapt.method == "fft" and "detect" not in tc.stages
  clip = RunCLIP(c, tiny_clip)
  mask = run.train_mask(c, splits["train"], None, mesh=mesh1, clip=clip, workdir=tmp_path,
                        eval_splits={"test": splits["test"]})
  res = adapt_train.run(c, tmp_path, splits=splits, mesh=mesh1, writer=metric_writers.LoggingWriter(), clip=clip,
                        mask=mask)
  kept = np.load(tmp_path / "baselines" / "turn" / "detection.npz")
  assert res["train_on"] == "turn" and res["num_selected"] == int(kept["is_clean"].sum())
  assert "test_top1" in kept.files  # the probe's own accuracy


def test_best_accuracy_is_the_best_evaluated_epoch_and_leaves_the_last_one_alone():
  """best_over_epochs on a history whose best epoch is not the last: the best (earliest among equals) is reported
  beside the last, and the last evaluation is not touched."""
  history = [{"epoch": 1, "test": 0.5}, {"epoch": 2, "test": 0.7}, {"epoch": 3, "test": 0.7}, {"epoch": 4, "test": 0.6}]
  final = {"test": {"top1": 0.6, "count": 10}}
  assert adapt_train.best_over_epochs(history, final, 4.0) == {"test": {"best_top1": 0.7, "best_epoch": 2}}
  assert final == {"test": {"top1": 0.6, "count": 10}}
  assert adapt_train.best_over_epochs(history[:1], final, 2.0) == {"test": {"best_top1": 0.6, "best_epoch": 2.0}}


def test_best_accuracy_over_epochs_and_every_epochs_clean_mask_are_kept(tiny_clip, splits, mesh1, tmp_path):
  """New: the best test accuracy over the evaluated epochs beside the last (the reference prints both), and the
  clean mask of every phase-1 epoch (the paper's epoch-sensitivity figure)."""
  c = tiny_config(tiny_clip, adapt=dict(epochs=3, eval_every_epochs=1))
  res = adapt_train.run(c, tmp_path, splits=splits, mesh=mesh1, writer=metric_writers.LoggingWriter(),
                        clip=RunCLIP(c, tiny_clip), mask=np.ones(N_TRAIN, bool))
  history = json.loads((tmp_path / "adapt" / adapt_train.HISTORY_FILE).read_text())
  assert [h["epoch"] for h in history] == [1, 2, 3]
  best = max(history, key=lambda h: (h["test"], -h["epoch"]))
  assert res["test"]["best_top1"] == best["test"] and res["test"]["best_epoch"] == best["epoch"]
  assert res["test"]["top1"] == history[-1]["test"]  # the last epoch's, not the best

  d = tiny_config(tiny_clip, detect=dict(epochs=3))
  detection = detect_train.run(d, tmp_path, train_split=splits["train"], mesh=mesh1,
                               writer=metric_writers.LoggingWriter(), checkpoint=tiny_clip)
  per_epoch = detection["epoch_is_clean"]
  assert per_epoch.shape == (3, N_TRAIN) and per_epoch.dtype == bool
  np.testing.assert_array_equal(per_epoch[-1], detection["online_is_clean"])


def test_label_probability_ranking_keeps_deft_mask_and_ranks_by_the_positive_prompts(tiny_clip, splits, mesh1,
                                                                                      tmp_path):
  """detect.ranking: "margin" (s+_y - s-_y) or "label_probability" (the scoring pass's softmax over the
  positive prompts at the given label); the same training gives the same mask either way."""
  train = splits["train"]
  out = {}
  for ranking in ("margin", "label_probability"):
    c = tiny_config(tiny_clip, detect=dict(epochs=1, ranking=ranking))
    c.report.export_arrays = False  # the label probability needs no export to be computed
    out[ranking] = detect_train.run(c, tmp_path / ranking, train_split=train, mesh=mesh1,
                                    writer=metric_writers.LoggingWriter(), checkpoint=tiny_clip)
  m, p = out["margin"], out["label_probability"]
  for k in ("is_clean", "online_is_clean", "pass_is_clean", "suggested", "p_clean"):
    np.testing.assert_array_equal(m[k], p[k], err_msg=k)
  np.testing.assert_array_equal(m["score"], m["margin"])
  assert not (tmp_path / "label_probability" / "detect" / "pred_probs.npy").exists()
  # Recompute the probability from the learned prompts: a scoring pass of the finished detector.
  d = Detector(tiny_config(tiny_clip, detect=dict(epochs=1)), class_names=train.class_names,
               num_examples=train.num_examples, mesh=mesh1, checkpoint=tiny_clip, steps_per_epoch=1)
  params = d.init_state(jax.random.key(0))["params"]
  learned = dict(np.load(tmp_path / "label_probability" / "detect" / "learned_params.npz"))
  trained = detect_train.with_learned_params(params, learned)
  np.testing.assert_array_equal(trained["prompts"]["pos_ctx"], learned["prompts/pos_ctx"])
  with pytest.raises(ConfigError, match="not parameters of this detector"):
    detect_train.with_learned_params(params, {**learned, "clip/other": np.zeros(1)})
  from deft_jax.data.config import image_spec
  scored = detect_train.score_split(d, trained, train, batch_size=8, with_embedding=True,
                                    data_kw=image_spec(d.config.data, d.model.config.vision.image_size).pipeline_kw())
  want = scored["pred_probs"][np.arange(train.num_examples), train.labels]
  np.testing.assert_allclose(p["label_score"], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p["score"], np.log(want), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(p["pass_score"], p["score"])  # the scoring pass is where it comes from
  np.testing.assert_array_equal(p["online_score"], m["online_margin"])  # the online records have no softmax
  with pytest.raises(ConfigError, match="ranking must be one of"):
    detect_train.run(tiny_config(tiny_clip, detect=dict(ranking="loss")), tmp_path / "bad", train_split=train,
                     mesh=mesh1, writer=metric_writers.LoggingWriter(), checkpoint=tiny_clip)
  with pytest.raises(ConfigError, match="set detect.scoring_pass=True"):
    detect_train.run(tiny_config(tiny_clip, detect=dict(ranking="label_probability", scoring_pass=False)),
                     tmp_path / "bad2", train_split=train, mesh=mesh1, writer=metric_writers.LoggingWriter(),
                     checkpoint=tiny_clip)
