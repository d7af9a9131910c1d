"""The shared-prefix text path (deft_jax/models/text_prefix.py) against the full path it replaces: the same text
features and the same gradients with respect to both learned contexts, in fp32, for every prompt layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.models import prompts as prompts_lib
from deft_jax.models import clip as clip_lib
from deft_jax.models import presets, text_prefix, zeroshot
from deft_jax.models.tokenizer import Tokenizer

# Names of 1 to 5 tokens (with ".": suffixes of 3 to 7 tokens with the end of text), as CIFAR-100's at C = 1000.
NAMES = ("cat", "aquarium fish", "sweet pepper 3", "dog", "lawn mower 12", "x", "maple tree of the north", "ray")
TOL = 1e-5


@pytest.fixture(scope="module")
def tok():
  return Tokenizer()


@pytest.fixture(scope="module")
def tiny():
  cfg = presets.get_preset("tiny")
  model = clip_lib.CLIP(cfg)
  return model, clip_lib.init_params(model, jax.random.key(0))


def _loss(feats, key=jax.random.key(7)):
  """A DEFT-like objective of both feature sets: CE of random unit images against the positive features and
  a squared penalty on the negative logits (gradients of order one)."""
  pos, neg = feats
  img = clip_lib.normalize(jax.random.normal(key, (6, pos.shape[1])))
  labels = jnp.arange(6) % pos.shape[0]
  s_pos, s_neg = 20.0 * img @ pos.T, 20.0 * img @ neg.T
  ce = jnp.mean(jax.nn.logsumexp(s_pos, -1) - jnp.take_along_axis(s_pos, labels[:, None], -1)[:, 0])
  return ce + 0.01 * jnp.mean(s_neg ** 2)


def _features_and_grads(model, params, ctx, template, **kw):
  def f(c):
    feats = prompts_lib.text_features(model, params, c, template, **kw)
    return _loss(feats), feats
  (_, feats), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(ctx)
  return feats, grads


_FULL = {}  # the full path's results per prompt layout, shared by the parametrisations that compare with them


def _max_diffs(a, b):
  (fa, ga), (fb, gb) = a, b
  feat = max(float(jnp.abs(x - y).max()) for x, y in zip(fa, fb))
  grad = {k: float(jnp.abs(ga[k] - gb[k]).max()) for k in ga}
  return feat, grad


@pytest.mark.parametrize("position, class_specific, prefix, max_groups, chunk", [
    # The method's default (unified context, name at the end): unpadded suffixes, all padded to the longest,
    # two buckets with some padding and chunks of 3 prompts (two classes per chunk and context).
    ("end", False, 1 + 4, 8, 0), ("end", False, 1 + 4, 1, 0), ("end", False, 1 + 4, 2, 3),
    # What the other layouts share: [SOS] and half the context ("middle"); [SOS] only.
    ("middle", False, 1 + 2, 2, 3), ("front", False, 1, 2, 3), ("end", True, 1, 2, 3)])
def test_shared_prefix_path_gives_the_full_paths_features_and_context_gradients(
    tiny, tok, monkeypatch, position, class_specific, prefix, max_groups, chunk):
  model, params = tiny
  template = prompts_lib.build_template(NAMES, tok, n_ctx=4, position=position)
  ctx = prompts_lib.init_prompts(jax.random.key(1), template, 32, class_specific=class_specific)
  ctx = jax.tree.map(lambda c: c * 25.0, ctx)  # contexts of unit scale, as after training
  monkeypatch.setattr(text_prefix, "MAX_BUCKETS", max_groups)
  layout = prompts_lib.text_layout(template, class_specific=class_specific)
  assert layout.prefix == prefix
  padded = layout.suffix_tokens - (template.eot + 1 - prefix).sum()
  assert (padded == 0) == (max_groups == 8)  # 8 buckets: every suffix unpadded; 1 or 2: some padded
  key = (position, class_specific)
  if key not in _FULL:
    _FULL[key] = _features_and_grads(model, params, ctx, template, share_prefix=False)
  full = _FULL[key]
  shared = _features_and_grads(model, params, ctx, template, share_prefix=True, chunk=chunk)
  feat, grad = _max_diffs(full, shared)
  assert feat < TOL and max(grad.values()) < TOL, (feat, grad)
  # The comparison is not vacuous: both contexts receive gradients well above the tolerance; the classes differ.
  assert min(float(jnp.abs(full[1][k]).max()) for k in ("pos_ctx", "neg_ctx")) > 1e-3
  assert float(jnp.abs(full[0][0][0] - full[0][0][1]).max()) > 1e-3


def test_layout_shares_sos_and_context_once_and_buckets_suffixes_by_length(tok):
  template = prompts_lib.build_template(NAMES, tok, n_ctx=16)
  layout = prompts_lib.text_layout(template)
  lengths = template.eot + 1 - 17
  assert layout.prefix == 17 and layout.length == template.ids.shape[1]
  assert sorted(i for rows, _ in layout.buckets for i in rows) == list(range(len(NAMES)))
  for rows, s in layout.buckets:
    assert s == lengths[list(rows)].max()  # each bucket is padded to its own longest suffix only
  assert [s for _, s in layout.buckets] == sorted(s for _, s in layout.buckets)
  one = prompts_lib.text_layout(template, max_groups=1)
  assert one.buckets == ((tuple(int(i) for i in np.argsort(lengths, kind="stable")), int(lengths.max())),)
  assert prompts_lib.text_layout(template, share_prefix=False).prefix == 0


def test_buckets_minimise_padded_tokens():
  # CIFAR-100's names cycled to C = 1000 (benchmarks/common.py): suffixes of 3, 4, 5 and 6 tokens.
  lengths = np.repeat([3, 4, 5, 6], [85, 776, 103, 36])
  assert text_prefix.bucket_lengths(lengths, 4) == [3, 4, 5, 6]
  assert text_prefix.bucket_lengths(lengths, 1) == [6]
  # Two buckets: {3, 4} padded to 4 and {5, 6} to 6 (4,324 tokens) beats every other split.
  assert text_prefix.bucket_lengths(lengths, 2) == [4, 6]
  assert text_prefix.bucket_lengths(np.array([5, 5, 5]), 4) == [5]


def test_model_prefix_and_suffix_equal_the_whole_sequence_in_every_encoder_layout():
  cfg = presets.get_preset("tiny")
  e = 0.1 * jax.random.normal(jax.random.key(3), (2, 3, 12, 32))
  e = e.at[:, :, :5].set(e[:, :1, :5])  # 5 shared tokens per group
  eot = np.array([7, 9, 11])
  for kw in (dict(), dict(remat=True), dict(scan=True, remat=True)):
    model = clip_lib.CLIP(cfg.replace(**kw))
    params = clip_lib.init_params(model, jax.random.key(0))
    v = {"params": params}
    full = model.apply(v, e.reshape(6, 12, 32), jnp.asarray(np.tile(eot, 2)),
                       method=clip_lib.CLIP.encode_text_embeds).reshape(2, 3, -1)
    kv = model.apply(v, e[:, 0, :5], method=clip_lib.CLIP.encode_text_prefix)
    assert kv[0].shape == (2, 2, 5, 2, 16)  # [layers, groups, prefix, heads, head_dim]
    # Suffix padding after the end of text (here 2 extra tokens of noise) changes nothing.
    suffix = jnp.concatenate([e[:, :, 5:], jax.random.normal(jax.random.key(4), (2, 3, 2, 32))], axis=2)
    out = model.apply(v, kv, suffix, jnp.asarray(eot - 5), method=clip_lib.CLIP.encode_text_suffix)
    np.testing.assert_allclose(out, full, atol=TOL, rtol=0)
    assert float(jnp.abs(full[0, 0] - full[0, 1]).max()) > 1e-2  # not vacuous: the sequences differ


def test_zero_shot_features_through_the_shared_path_equal_the_full_path(tiny, tok):
  model, params = tiny
  for templates in (("a photo of a {}.",), zeroshot.TEMPLATES[:4]):
    shared = zeroshot.class_text_features(model, params, NAMES, tok, templates, chunk=3)
    full = zeroshot.class_text_features(model, params, NAMES, tok, templates, share_prefix=False)
    np.testing.assert_allclose(shared, full, atol=TOL, rtol=0)
  ids = tok([f"a photo of a {n}." for n in NAMES])
  single = text_prefix.plan(ids, np.argmax(ids == tok.eos_id, axis=-1))
  assert single.prefix == 5  # [SOS] a photo of a


def test_a_run_recorded_before_prefix_sharing_resumes_with_it(tmp_path):
  from conftest import tiny_config

  from deft_jax import checkpoint as ckpt_lib
  from deft_jax.errors import WorkdirConflictError

  old = tiny_config()
  del old.detect["text_prefix_sharing"]
  ckpt_lib.check_workdir(tmp_path, old)
  (tmp_path / "detect" / "checkpoints").mkdir(parents=True)
  (tmp_path / "detect" / "checkpoints" / "0").write_text("x")  # phase 1 has outputs
  ckpt_lib.check_workdir(tmp_path, tiny_config(detect=dict(text_prefix_sharing=False, text_chunk=64)))
  with pytest.raises(WorkdirConflictError):  # a change of results is still refused
    ckpt_lib.check_workdir(tmp_path, tiny_config(detect=dict(n_ctx=8)))
