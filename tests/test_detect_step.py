"""Phase-1 train step: frozen weights, optimiser state, gradient routing, sharding, scoring coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from deft_jax import optim, parallel
from deft_jax.detect import losses
from deft_jax.detect import step as detect_step
from deft_jax.detect.detector import Detector
from deft_jax.tree import flatten

C = 5
N = 40


def _config(peft=None, trainable=None):
  c = tiny_config(detect=dict(epochs=2, warmup_epochs=1, batch_size=8, n_ctx=4))
  c.detect.peft.update(peft or {"vpt": "deep", "vpt_tokens": 3, "lora_rank": 2})
  c.detect.trainable = trainable
  return c


def _detector(mesh, **kw):
  return Detector(_config(**kw), class_names=[f"class {i}" for i in range(C)], num_examples=N, mesh=mesh,
                  checkpoint=None, steps_per_epoch=2)


def _batch(i, b=8, valid=None):
  rng = np.random.default_rng(i)
  return {"image": rng.normal(size=(b, 32, 32, 3)).astype(np.float32),
          "index": (np.arange(b) + i * b).astype(np.int32) % N, "label": rng.integers(0, C, b).astype(np.int32),
          "clean_label": rng.integers(0, C, b).astype(np.int32),
          "mask": np.ones(b, bool) if valid is None else valid}


def _run(det, steps):
  state = det.init_state(jax.random.key(0))
  init = jax.device_get(state)
  train_step = det.jit_train_step(state)
  for i in range(steps):
    state, metrics = train_step(state, parallel.shard_batch(_batch(i), det.mesh))
  return init, jax.device_get(state), metrics


def test_frozen_params_are_bit_identical_and_trainable_ones_change_after_steps(mesh1):
  det = _detector(mesh1)
  init, final, metrics = _run(det, 3)
  mask = flatten(det.mask)
  a, b = flatten(init["params"]), flatten(final["params"])
  trainable = [k for k, m in mask.items() if m]
  assert set(trainable) >= {"prompts/pos_ctx", "prompts/neg_ctx"}
  assert any("vpt_prompt" in k for k in trainable) and any("_lora/lora_b" in k for k in trainable)
  assert not any(k.startswith("clip/text_model") for k in trainable)
  for k, m in mask.items():
    if m:
      assert not np.array_equal(a[k], b[k]), f"trainable {k} did not change"
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"frozen {k} changed")
  assert np.isfinite(metrics["loss"])


def test_optimizer_state_holds_only_trainable_leaves(mesh1):
  det = _detector(mesh1)
  state = det.init_state(jax.random.key(0))
  n_trainable = sum(flatten(det.mask).values())
  # SGD with momentum keeps exactly one trace per trainable parameter; frozen ones keep nothing.
  assert optim.count_state_leaves(state["opt_state"]) == n_trainable
  trace_sizes = sum(x.size for x in jax.tree_util.tree_leaves(state["opt_state"]) if getattr(x, "ndim", 0) > 0)
  train_sizes = sum(v.size for k, v in flatten(state["params"]).items() if flatten(det.mask)[k])
  assert trace_sizes == train_sizes


def test_every_parameter_must_match_an_optimizer_rule(mesh1):
  with pytest.raises(ValueError, match="match no optimiser rule"):
    _detector(mesh1, trainable=[("prompts/.*", 1.0)])


def _grads_of(det, params, term, batch, step):
  rng = jax.random.key(3)

  def f(p):
    _, aux = detect_step.loss_fn(p, batch, rng, step, model=det.model, template=det.template, settings=det.settings)
    return aux[term]

  return flatten(jax.jit(jax.grad(f))(params))


@pytest.mark.parametrize("step", [0, 3], ids=["warmup", "after_warmup"])
def test_loss_neg_trains_negative_prompts_only_and_loss_cls_never_does(mesh1, step):
  det = _detector(mesh1, peft={"vpt": "deep", "vpt_tokens": 3, "lora_rank": 2, "lora_alpha": 2.0})
  state = det.init_state(jax.random.key(0))
  params = jax.device_get(state["params"])
  # Non-zero LoRA B so that every PEFT parameter has a gradient path.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(p) else x, params)
  batch = {k: jnp.asarray(v) for k, v in _batch(0).items()}
  g_neg = _grads_of(det, params, "loss_neg", batch, step)
  g_cls = _grads_of(det, params, "loss_cls", batch, step)
  mask = flatten(det.mask)
  for k, m in mask.items():
    if not m:
      continue
    if k == "prompts/neg_ctx":
      assert np.abs(g_neg[k]).sum() > 0
      assert np.array_equal(g_cls[k], np.zeros_like(g_cls[k])), k
    else:  # positive prompts and every PEFT parameter
      assert np.array_equal(g_neg[k], np.zeros_like(g_neg[k])), k
      assert np.abs(g_cls[k]).sum() > 0, k


def test_masked_means_ignore_padding_and_survive_empty_selection():
  s_pos = jnp.array([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
  s_neg = jnp.array([[9.0, 9.0], [9.0, 9.0], [0.0, 0.0]])  # rows 0 and 1: nothing selected
  labels = jnp.array([0, 1, 0])
  valid = jnp.array([True, True, False])  # row 2 is padding (it would be selected)
  loss, aux = losses.deft_loss(s_pos, s_neg, labels, valid, jax.random.key(0), warmup=False, pseudo_labels=True)
  assert float(aux["loss_cls"]) == 0.0 and np.isfinite(float(loss))
  # L_neg by hand over the two valid rows: complementary class is the other class (C = 2).
  py = 1 / (1 + np.exp(-(np.array(s_pos) - np.array(s_neg))))
  comp = np.array([1, 0])
  pseudo = np.argmax(np.array(s_pos), -1)[:2]  # unselected -> argmax of s_pos
  want = np.mean(-np.log(np.clip(1 - py[[0, 1], comp], 1e-5, 1))) + \
      np.mean(-np.log(np.clip(py[[0, 1], pseudo], 1e-5, 1)))
  np.testing.assert_allclose(float(aux["loss_neg"]), want, rtol=1e-5)


def test_loss_cls_is_ce_over_selected_and_sce_in_realworld_warmup():
  s_pos = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1], [0.0, 3.0, 0.0]])
  s_neg = jnp.array([[-5.0, 0.0, 0.0], [9.0, 9.0, 9.0], [0.0, -5.0, 0.0]])  # rows 0, 2 selected
  labels = jnp.array([0, 0, 1])
  valid = jnp.ones(3, bool)
  logp = jax.nn.log_softmax(s_pos)
  ce = -np.array([logp[0, 0], logp[1, 0], logp[2, 1]])
  _, aux = losses.deft_loss(s_pos, s_neg, labels, valid, jax.random.key(0), warmup=False, pseudo_labels=True)
  np.testing.assert_allclose(float(aux["loss_cls"]), ce[[0, 2]].mean(), rtol=1e-6)
  _, aux = losses.deft_loss(s_pos, s_neg, labels, valid, jax.random.key(0), warmup=True, pseudo_labels=False,
                            warmup_loss="sce")
  p_y = np.exp(-ce)
  np.testing.assert_allclose(float(aux["loss_cls"]), np.mean(ce + np.log(1e4) * (1 - p_y)), rtol=1e-5)


def test_strict_rule_requires_the_given_label_to_have_the_largest_margin():
  py = jnp.array([[0.9, 0.95], [0.9, 0.2]])
  labels = jnp.array([0, 0])
  _, loose = losses.select_clean(py, labels, strict=False)
  _, strict = losses.select_clean(py, labels, strict=True)
  assert loose.tolist() == [True, True] and strict.tolist() == [False, True]


def test_complementary_labels_never_equal_the_label_and_cover_the_others():
  labels = jnp.zeros(20000, jnp.int32) + 3
  comp = np.asarray(losses.complementary_labels(jax.random.key(0), labels, 7))
  assert (comp != 3).all()
  counts = np.bincount(comp, minlength=7)
  assert counts[3] == 0
  np.testing.assert_allclose(np.delete(counts, 3) / 20000, 1 / 6, atol=0.02)


def test_eight_devices_reach_the_same_parameters_as_one(mesh1):
  assert len(jax.devices()) >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  _, one, _ = _run(_detector(mesh1), 3)
  mesh8 = parallel.make_mesh([("data", 8)])
  _, eight, _ = _run(_detector(mesh8), 3)
  a, b = flatten(one["params"]), flatten(eight["params"])
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
  for k in ("selected", "suggested"):
    np.testing.assert_array_equal(one["online"][k], eight["online"][k])
  for k in ("p_clean", "margin"):
    np.testing.assert_allclose(one["online"][k], eight["online"][k], atol=1e-5)


def test_fsdp_rule_shards_parameters_and_matches_replicated(mesh1):
  mesh8 = parallel.make_mesh([("data", 8)])
  det = _detector(mesh8)
  det.sharding_rules = [("token_embedding", "fsdp")]
  state = det.init_state(jax.random.key(0))
  emb = state["params"]["clip"]["text_model"]["embeddings"]["token_embedding"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("data", None)
  _, rep, _ = _run(_detector(mesh8), 2)
  det2 = _detector(mesh8)
  det2.sharding_rules = [("token_embedding", "fsdp")]
  _, fsdp, _ = _run(det2, 2)
  for k, v in flatten(rep["params"]).items():
    np.testing.assert_allclose(v, flatten(fsdp["params"])[k], atol=1e-6, err_msg=k)


def test_padding_rows_never_write_online_records(mesh1):
  det = _detector(mesh1)
  state = det.init_state(jax.random.key(0))
  train_step = det.jit_train_step(state)
  valid = np.array([True] * 5 + [False] * 3)
  batch = _batch(0, valid=valid)
  batch["index"][5:] = 0  # padding points at example 0, which is also real row 0
  state, _ = train_step(state, parallel.shard_batch(batch, det.mesh))
  online = jax.device_get(state["online"])
  visited = np.zeros(N, bool)
  visited[batch["index"][:5]] = True
  assert (online["p_clean"][~visited] == 0).all() and (online["p_clean"][visited] > 0).all()


def test_ctx_init_starts_both_contexts_at_the_words_and_then_trains_them_apart(mesh1, tiny_clip):
  """CoOp's ctx_init: both contexts are the word embeddings of the text (so p_yes = 1/2 for every class at
  step 0), held in two buffers: the step donates the state, and one buffer under two names cannot be."""
  c = _config()
  c.detect.ctx_init = "a photo of a"
  c.model.checkpoint = tiny_clip
  det = Detector(c, class_names=[f"class {i}" for i in range(C)], num_examples=N, mesh=mesh1,
                 checkpoint=tiny_clip, steps_per_epoch=2)
  state = det.init_state(jax.random.key(0))
  words = np.asarray(state["params"]["clip"]["text_model"]["embeddings"]["token_embedding"]["embedding"])[
      np.asarray(det.template.init_ids)]
  assert det.template.n_ctx == len(det.template.init_ids) == 4
  for name in ("pos_ctx", "neg_ctx"):
    np.testing.assert_array_equal(np.asarray(state["params"]["prompts"][name]), words)
  scores = jax.device_get(det.jit_score(state["params"])(state["params"], parallel.shard_batch(_batch(0), mesh1)))
  np.testing.assert_allclose(scores["p_clean"], 0.5, atol=1e-6)
  train_step = det.jit_train_step(state)
  for i in range(3):
    state, metrics = train_step(state, parallel.shard_batch(_batch(i), mesh1))
  pos, neg = (np.asarray(state["params"]["prompts"][k]) for k in ("pos_ctx", "neg_ctx"))
  assert np.isfinite(metrics["loss"])
  assert not np.array_equal(pos, words) and not np.array_equal(neg, words) and not np.array_equal(pos, neg)


def test_pretrained_leaves_are_neither_initialised_nor_compiled_yet_the_state_is_the_same(mesh1, tiny_clip,
                                                                                           monkeypatch):
  """train_state.create(loaded=...): a detector over a checkpoint builds exactly the state it built when every
  CLIP weight was first randomly initialised and then overwritten (the VPT and LoRA parameters, the prompts and
  the optimiser state bit for bit), while init compiles and computes only those fresh leaves. Before, the
  whole CLIP's random initialisation was compiled and run in every stage (5-8 s of XLA:CPU compilation each),
  only to be thrown away by the load."""
  from deft_jax import train_state
  from deft_jax.models import build as model_build

  det = Detector(_config(), class_names=[f"class {i}" for i in range(C)], num_examples=N, mesh=mesh1,
                 checkpoint=tiny_clip, steps_per_epoch=2)
  fresh = dict(train_state.flat_paths(jax.device_get(det.init_state(jax.random.key(3)))))
  monkeypatch.setattr(model_build, "pretrained_leaves", lambda *a, **k: None)  # the old path: init everything
  full = dict(train_state.flat_paths(jax.device_get(det.init_state(jax.random.key(3)))))
  assert sorted(fresh) == sorted(full)
  for k in full:
    np.testing.assert_array_equal(np.asarray(fresh[k]), np.asarray(full[k]), err_msg=k)
  assert any("vpt" in k for k in full) and any("lora" in k for k in full)  # fresh leaves inside the CLIP

  monkeypatch.undo()
  predicate = model_build.pretrained_leaves("params/clip", tiny_clip)
  init = det._init  # pylint: disable=protected-access
  paths = [p for p, _ in train_state.flat_paths(train_state.abstract_state(init, jax.random.key(3)))]
  skipped = [p for p in paths if predicate(p)]
  assert skipped and not any("vpt" in p or "lora" in p or "prompts" in p for p in skipped)
  keep = [not predicate(p) for p in paths]
  kept_init = lambda r: [x for x, k in zip(jax.tree.leaves(init(r)), keep) if k]  # noqa: E731
  hlo_kept = jax.jit(kept_init).lower(jax.random.key(3)).compile().as_text()
  hlo_all = jax.jit(init).lower(jax.random.key(3)).compile().as_text()
  assert len(hlo_kept) < 0.7 * len(hlo_all)


def test_a_load_that_leaves_a_promised_leaf_unset_is_reported_by_name(mesh1):
  """create(loaded=...) hands load ShapeDtypeStructs for the promised leaves; a load that does not fill one
  would otherwise put an abstract value into the train state."""
  from deft_jax import train_state

  def init(rng):
    a, b = jax.random.split(rng)
    return {"w": jax.random.normal(a, (3,)), "v": jax.random.normal(b, (2,))}

  with pytest.raises(RuntimeError, match="'w'|w"):
    train_state.create(init, jax.random.key(0), mesh=mesh1, load=lambda s: s, loaded=lambda p: p == "w")
  state, _ = train_state.create(init, jax.random.key(0), mesh=mesh1, load=lambda s: {**s, "w": np.ones(3, np.float32)},
                                loaded=lambda p: p == "w")
  np.testing.assert_array_equal(np.asarray(state["w"]), 1.0)
  np.testing.assert_array_equal(np.asarray(state["v"]), np.asarray(init(jax.random.key(0))["v"]))
