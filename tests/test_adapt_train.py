"""Phase 2 on a tiny random CLIP and the packaged demo data: rules, frozen weights, head init, evaluation, stage."""

import json
import shutil

import jax
import numpy as np
import pytest
from clu import metric_writers

from conftest import tiny_config
from deft_jax import adapt, baselines, config_lib, parallel, run
from deft_jax.adapt import methods
from deft_jax.adapt import train as adapt_train
from deft_jax.classify import classifier as clf_lib
from deft_jax.classify import evaluate
from deft_jax.classify import trainer as trainer_lib
from deft_jax.classify.run_clip import RunCLIP
from deft_jax.data import cifar_offline, pipeline
from deft_jax.detect import step as detect_step
from deft_jax.models import clip as clip_lib
from deft_jax.models import prompts as prompts_lib
from deft_jax.models import clip_weights, presets, zeroshot
from deft_jax.models.peft import PEFTConfig
from deft_jax.models.tokenizer import Tokenizer
from deft_jax.tree import flatten

N_TRAIN, N_TEST, B = 20, 13, 8  # 13 test images: the last eval batch is padded


@pytest.fixture(scope="module")
def ckpt(tiny_clip):
  """A tiny random CLIP saved as a HF checkpoint (what the pretrain stage produces)."""
  return tiny_clip


@pytest.fixture(scope="module")
def splits():
  s = cifar_offline.load_demo(train_indices=f"0:{N_TRAIN}", test_size=N_TEST)
  return {"train": s["train"], "test": s["test"]}


def _config(ckpt, **adapt):
  c = tiny_config(ckpt, adapt=adapt)
  c.data.normalization = "cifar10"
  c.baselines.epochs = 2
  return c


def _phase2(config, names, mesh, ckpt, *, calibration_images=None, phase1_params=None):
  """The classifier of config.adapt.method, as the phase-2 stage builds it."""
  ctx = methods.Context(config, names, RunCLIP(config, ckpt), mesh, jax.random.key(0), phase1_params=phase1_params,
                        calibration_images=calibration_images)
  return adapt.build(config.adapt.method, ctx)


def _classifier(config, splits, mesh, ckpt):
  return _phase2(config, splits["train"].class_names, mesh, ckpt,
                 calibration_images=clf_lib.calibration_images(splits["train"]))


def _train_steps(config, clf, split, mesh, steps=2):
  spe = pipeline.steps_per_epoch(split, B)
  settings = trainer_lib.make_settings(config.adapt.loss, config.adapt.loss_params, steps_per_epoch=spe)
  tr = trainer_lib.Trainer(clf, optim_cfg=config.adapt.optim, schedule_cfg=config.adapt.schedule,
                           settings=settings, total_steps=steps, steps_per_epoch=spe, mesh=mesh)
  state = tr.init_state(jax.random.key(1), num_examples=split.num_examples, num_classes=split.num_classes)
  init = jax.device_get(state)
  fn = tr.jit_train_step(state)
  for local in list(pipeline.train_batches(split, global_batch_size=B, image_size=32, seed=0, epoch=0,
                                           augment="cifar"))[:steps]:
    state, metrics = fn(state, parallel.shard_batch(local, mesh))
  return tr, init, jax.device_get(state), metrics


def _check_only_rules_train(tr, init, final, want_trainable):
  mask = flatten(tr.mask)
  trainable = {k for k, m in mask.items() if m}
  assert trainable == {k for k in mask if want_trainable(k)}
  a, b = flatten(init["params"]), flatten(final["params"])
  for k in mask:
    if k in trainable:
      assert not np.array_equal(a[k], b[k]), f"trainable {k} did not change"
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"frozen {k} changed")
  return trainable


def test_fft_trains_exactly_the_blocks_and_head_from_a_fresh_pretrained_encoder(ckpt, splits, mesh1):
  config = _config(ckpt)
  clf = _classifier(config, splits, mesh1, ckpt)
  params = flatten(jax.device_get(clf.variables["params"]))
  # Nothing of phase 1 (prompts, VPT, LoRA) nor the unused text tower / projection is in the classifier...
  assert all(k.startswith(("vision_model/", "head/")) for k in params)
  assert not any(s in k for k in params for s in ("vpt_prompt", "_lora", "prompts", "text_model"))
  # ...and every encoder weight is the checkpoint's, bit for bit.
  loaded = clip_weights.hf_to_flax(clip_weights.read_safetensors(ckpt))
  for k, v in params.items():
    if k.startswith("vision_model/"):
      np.testing.assert_array_equal(v, loaded[k], err_msg=k)
  assert params["head/kernel"].shape == (32, 10)
  tr, init, final, metrics = _train_steps(config, clf, splits["train"], mesh1)
  trained = _check_only_rules_train(tr, init, final, lambda k: k.startswith(("vision_model/encoder/", "head/")))
  assert "vision_model/embeddings/patch_embedding/kernel" not in trained
  assert "vision_model/post_layernorm/scale" not in trained and "vision_model/pre_layrnorm/bias" not in trained
  assert np.isfinite(metrics["loss"])
  # Frozen leaves carry no optimiser state: momentum only for the blocks and the head.
  n_trainable = sum(np.size(x) for k, x in flatten(init["params"]).items() if k in trained)
  state_size = sum(np.size(x) for x in jax.tree_util.tree_leaves(init["opt_state"]) if np.ndim(x) > 0)
  assert state_size == n_trainable


def test_all_trainable_option_trains_every_visual_parameter(ckpt, splits, mesh1):
  config = _config(ckpt, trainable="all")
  tr, init, final, _ = _train_steps(config, _classifier(config, splits, mesh1, ckpt), splits["train"], mesh1)
  # The class embedding only gets a gradient through attention; everything else must move.
  _check_only_rules_train(tr, init, final, lambda k: True)


def test_peft_variant_trains_only_peft_parameters_and_head(ckpt, splits, mesh1):
  config = _config(ckpt, method="peft", peft=dict(vpt="deep", vpt_tokens=2, lora_rank=2))
  config.adapt.schedule.lr = 0.05
  tr, init, final, _ = _train_steps(config, _classifier(config, splits, mesh1, ckpt), splits["train"], mesh1)
  trained = _check_only_rules_train(
      tr, init, final, lambda k: k.startswith("head/") or "vpt_prompt" in k or "_lora/" in k)
  # LoRA's A gets no gradient while B is still zero at the first step; B must have moved.
  assert any(k.endswith("lora_b") for k in trained) and any(k.endswith("vpt_prompt") for k in trained)


def test_text_initialised_head_reproduces_the_zero_shot_classifier(ckpt, splits, mesh1):
  config = _config(ckpt, head_init="text")
  clf = _classifier(config, splits, mesh1, ckpt)
  zs = clf_lib.zeroshot_classifier(RunCLIP(config, ckpt), splits["train"].class_names,
                                   config.adapt.zeroshot_templates, mesh=mesh1, rng=jax.random.key(0))
  images = clf_lib.calibration_images(splits["train"])(clf.inputs)
  head_logits = np.asarray(clf.apply(clf.variables, images)[0])
  zs_logits = np.asarray(zs.apply(zs.variables, images)[0])
  np.testing.assert_array_equal(head_logits.argmax(1), zs_logits.argmax(1))
  # logits = zero-shot logits * |f| / mean|f|: the per-image factor is the same for every class, mean 1.
  ratio = head_logits / zs_logits
  np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(ratio[:, 0].mean(), 1.0, rtol=1e-4)


def test_zero_shot_classifier_matches_models_zeroshot(ckpt, splits, mesh1):
  config = _config(ckpt, method="zeroshot")
  zs = _phase2(config, splits["train"].class_names, mesh1, ckpt)
  model = clip_lib.CLIP(presets.get_preset("tiny"))
  params = clip_weights.load_pretrained(ckpt, jax.eval_shape(lambda k: clip_lib.init_params(model, k),
                                                             jax.random.key(0)))
  feats = zeroshot.class_text_features(model, params, splits["train"].class_names, Tokenizer(),
                                       ("a photo of a {}.",))
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(zs.apply(zs.variables, x)[0], zeroshot.zero_shot_logits(model, params, x, feats),
                             rtol=1e-4, atol=1e-4)


def test_no_adaptation_classifies_with_phase_one_prompts_and_peft(ckpt, splits, mesh1, tmp_path):
  config = _config(ckpt, method="none")
  config.detect.update(dict(n_ctx=4, peft=dict(vpt="deep", vpt_tokens=2, lora_rank=0)))
  names = splits["train"].class_names
  peft = PEFTConfig(vpt="deep", vpt_tokens=2)
  model = clip_lib.CLIP(presets.get_preset("tiny"), peft)
  params = clip_weights.load_pretrained(ckpt, jax.device_get(clip_lib.init_params(model, jax.random.key(3))))
  template = prompts_lib.build_template(names, Tokenizer(), n_ctx=4)
  prompts = prompts_lib.init_prompts(jax.random.key(4), template, 32)
  learned = {"prompts/" + k: np.asarray(v) for k, v in prompts.items()}
  learned.update({"clip/" + k: np.asarray(v) for k, v in flatten(params).items() if "vpt_prompt" in k})
  (tmp_path / "detect").mkdir()
  np.savez(tmp_path / "detect" / "learned_params.npz", **learned)
  clf = _phase2(config, names, mesh1, ckpt, phase1_params=tmp_path / "detect" / "learned_params.npz")
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  s_pos, _ = detect_step.logits(model, {"clip": params, "prompts": prompts}, x, template)
  np.testing.assert_allclose(clf.apply(clf.variables, x)[0], s_pos, rtol=1e-4, atol=1e-4)
  with pytest.raises(FileNotFoundError, match="detect stage"):
    _phase2(config, names, mesh1, ckpt, phase1_params=tmp_path / "elsewhere" / "detect" / "learned_params.npz")


def test_evaluation_is_exact_under_padding_and_device_count(ckpt, splits, mesh1):
  config = _config(ckpt)
  clf = _classifier(config, splits, mesh1, ckpt)
  test = splits["test"]
  ref = evaluate.predict(clf, clf.variables, test, mesh=mesh1, batch_size=N_TEST)  # one batch, no padding
  mesh8 = parallel.make_mesh([("data", -1)])
  got = evaluate.predict(clf, clf.variables, test, mesh=mesh8, batch_size=B)  # 2 batches, 3 padding rows
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  m = evaluate.accuracy(got, test.labels, num_classes=10, topk=(1, 5))
  assert m["count"] == N_TEST
  assert m["top1"] == pytest.approx(np.mean(got.argmax(1) == test.labels))
  top5 = np.mean([test.labels[i] in np.argsort(-got[i])[:5] for i in range(N_TEST)])
  assert m["top5"] == pytest.approx(top5)
  per = [np.mean(got.argmax(1)[test.labels == c] == c) if (test.labels == c).any() else None for c in range(10)]
  assert m["per_class_accuracy"] == pytest.approx(per)


def test_elr_memory_in_the_train_state_changes_only_at_visited_indices(ckpt, splits, mesh1):
  config = _config(ckpt, loss="elr")
  tr, init, final, metrics = _train_steps(config, _classifier(config, splits, mesh1, ckpt), splits["train"],
                                          mesh1, steps=1)
  assert init["elr"].shape == (N_TRAIN, 10) and not init["elr"].any()
  first = pipeline.train_batches(splits["train"], global_batch_size=B, image_size=32, seed=0, epoch=0,
                                 augment="cifar")
  visited = set(next(iter(first))["index"].tolist())
  changed = set(np.flatnonzero(final["elr"].any(1)).tolist())
  assert changed == visited and np.isfinite(metrics["loss"])
  np.testing.assert_allclose(final["elr"][sorted(changed)].sum(1), 0.7, rtol=1e-5)  # (1 - beta) * p


def test_backbone_registry_model_trains_with_batch_stats(splits, mesh1):
  config = _config("", backbone="resnet_tiny", backbone_checkpoint="none")
  clf = _phase2(config, splits["train"].class_names, mesh1, None)
  assert clf.optim["name"] == "adamw" and "batch_stats" in clf.variables
  tr, init, final, metrics = _train_steps(config, clf, splits["train"], mesh1)
  assert np.isfinite(metrics["loss"])
  a, b = flatten(init["extra"]["batch_stats"]), flatten(final["extra"]["batch_stats"])
  assert any(not np.array_equal(a[k], b[k]) for k in a)
  assert tr.optim_cfg["name"] == "adamw" and tr.schedule_cfg["lr"] == 1e-3


def test_stage_writes_results_atomically_and_reuses_them(ckpt, splits, mesh1, tmp_path):
  config = _config(ckpt, steps=3, epoch_over="selected")
  mask = np.arange(N_TRAIN) % 2 == 0
  writer = metric_writers.LoggingWriter()
  res = adapt_train.run(config, tmp_path, splits=splits, mesh=mesh1, writer=writer, clip=RunCLIP(config, ckpt),
                        mask=mask)
  assert res["num_selected"] == N_TRAIN // 2 and res["steps"] == 3
  assert res["epochs_equivalent"] == pytest.approx(3 / 2)  # 10 examples -> 2 steps per epoch
  on_disk = json.loads((tmp_path / "adapt" / "results.json").read_text())
  assert on_disk["test"]["top1"] == res["test"]["top1"] and len(on_disk["test"]["per_class_accuracy"]) == 10
  with np.load(tmp_path / "adapt" / "predictions.npz") as f:
    logits = f["test_logits"]
  assert res["test"]["top1"] == pytest.approx(np.mean(logits.argmax(1) == splits["test"].labels))
  assert adapt_train.run(config, tmp_path, splits=splits, mesh=mesh1, writer=writer, clip=RunCLIP(config, ckpt),
                         mask=None) == on_disk  # complete: reused, nothing retrained


def test_train_on_sources(ckpt, splits, mesh1):
  config = _config(ckpt)
  split = splits["train"]
  kw = dict(mesh=mesh1, clip=RunCLIP(config, ckpt))
  config.adapt.train_on = "clean_oracle"
  np.testing.assert_array_equal(run.train_mask(config, split, None, **kw), split.labels == split.clean_labels)
  config.adapt.train_on = "all"
  assert run.train_mask(config, split, None, **kw).all()
  config.adapt.train_on = "deft"
  with pytest.raises(ValueError, match="detect stage"):
    run.train_mask(config, split, None, **kw)
  with pytest.raises(ValueError, match="empty"):
    run.train_mask(config, split, {"is_clean": np.zeros(N_TRAIN, bool)}, **kw)
  config.adapt.train_on = "nonexistent"
  with pytest.raises(ValueError, match="turn"):  # the message lists the baselines
    run.train_mask(config, split, None, **kw)


def _check_contract(out, n):
  assert set(out) >= {"p_clean", "is_clean", "suggested", "margin", "label_score", "score"}
  assert out["p_clean"].dtype == np.float32 and out["is_clean"].dtype == bool
  assert out["suggested"].dtype == np.int32 and out["margin"].dtype == np.float32
  assert all(v.shape == (n,) for v in out.values() if v.ndim)
  assert ((out["p_clean"] >= 0) & (out["p_clean"] <= 1)).all()
  assert np.isfinite(out["score"]).all()


def test_label_match_selector_is_zero_shot_prediction_equals_label(ckpt, splits, mesh1, tmp_path):
  config = _config(ckpt)
  split = splits["train"]
  out = baselines.run("label_match", config, split, mesh=mesh1, clip=RunCLIP(config, ckpt), workdir=tmp_path)
  _check_contract(out, N_TRAIN)
  zs = clf_lib.zeroshot_classifier(RunCLIP(config, ckpt), split.class_names, config.adapt.zeroshot_templates,
                                   mesh=mesh1, rng=jax.random.key(0))
  logits = evaluate.predict(zs, zs.variables, split, mesh=mesh1, batch_size=B)
  np.testing.assert_array_equal(out["suggested"], logits.argmax(1))
  np.testing.assert_array_equal(out["is_clean"], logits.argmax(1) == split.labels)
  np.testing.assert_array_equal(out["is_clean"], out["margin"] > 0)
  assert (tmp_path / "baselines" / "label_match" / "detection.npz").exists()
  # the ranking score is log p(given label): monotone in p_clean
  np.testing.assert_allclose(np.exp(out["score"]), out["p_clean"], rtol=1e-5)


def test_training_selectors_return_the_detector_contract(ckpt, splits, mesh1, tmp_path):
  config = _config(ckpt)
  split = splits["train"]
  sl = baselines.run("small_loss", config, split, mesh=mesh1, clip=RunCLIP(config, ckpt))
  _check_contract(sl, N_TRAIN)
  # Last epoch: r = the split's noise rate (real noise: no nominal rate); floor((1 - r) * 8) of each full batch
  # of 8, at least 1 of the last 4.
  r = split.noise_rate()
  want = 2 * max(int(np.floor((1 - r) * 8)), 1) + max(int(np.floor((1 - r) * 4)), 1)
  assert sl["is_clean"].sum() == want
  config.baselines.gmm.model = "selector"
  g = baselines.run("gmm", config, split, mesh=mesh1, clip=RunCLIP(config, ckpt), workdir=tmp_path)
  _check_contract(g, N_TRAIN)
  np.testing.assert_array_equal(g["is_clean"], g["p_clean"] > 0.5)
  again = baselines.run("gmm", config, split, mesh=mesh1, clip=RunCLIP(config, ckpt), workdir=tmp_path)  # cached
  np.testing.assert_array_equal(again["p_clean"], g["p_clean"])


def test_a_resumed_stage_reproduces_the_uninterrupted_one(ckpt, splits, mesh1, tmp_path):
  # Each epoch visits all 20 examples (10 selected; the loss is masked): 3 steps per epoch, 6 in all.
  config = _config(ckpt, epochs=2, loss="elr")
  config.checkpoint_every_steps = 2
  kw = dict(splits=splits, mesh=mesh1, writer=metric_writers.LoggingWriter(), clip=RunCLIP(config, ckpt),
            mask=np.arange(N_TRAIN) % 2 == 0)
  first = adapt_train.run(config, tmp_path, **kw)
  out = tmp_path / "adapt"
  with np.load(out / "predictions.npz") as f:
    logits = f["test_logits"]
  # Simulate a preemption after step 4: the last checkpoint and the results are gone.
  assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]
  shutil.rmtree(out / "checkpoints" / "6")
  (out / "results.json").unlink()
  again = adapt_train.run(config, tmp_path, **kw)
  assert again["steps"] == first["steps"] == 6
  with np.load(out / "predictions.npz") as f:
    np.testing.assert_allclose(f["test_logits"], logits, rtol=1e-5, atol=1e-6)


def test_vlpt_evaluation_computes_the_class_prompts_once_not_per_batch(ckpt, splits, mesh1, monkeypatch):
  """Old behaviour caught: VLPT's apply ran the text tower over its C class prompts on every evaluation batch.
  Prepared once, the per-batch function must not call the text side and must give the same logits."""
  config = _config(ckpt, method="vlpt")
  clf = clf_lib.vlpt_classifier(RunCLIP(config, ckpt), class_names=splits["train"].class_names, mesh=mesh1,
                                rng=jax.random.key(0), peft=PEFTConfig(),
                                layout=prompts_lib.PromptLayout.from_config(config.detect))
  test = splits["test"]
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  want = np.asarray(clf.apply(clf.variables, x)[0])
  prepared = evaluate.prepare(clf, clf.variables, mesh1)
  ref = evaluate.predict(clf, clf.variables, test, mesh=mesh1, batch_size=B)

  def no_text(*a, **k):
    raise AssertionError("the text tower ran inside a per-batch evaluation")

  monkeypatch.setattr(prompts_lib, "context_features", no_text)
  np.testing.assert_allclose(clf.apply(prepared, x)[0], want, rtol=1e-5, atol=1e-5)
  clf.jit_cache.clear()  # trace the per-batch function again, now without a text tower to call
  got = evaluate.predict(clf, prepared, test, mesh=mesh1, batch_size=B, fn=evaluate.jit_logits(clf, prepared,
                                                                                              mesh1))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
