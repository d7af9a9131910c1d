"""The classifier kit's losses against hand-computed values; ELR's memory; the small-loss keep rule; the GMM's EM."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.baselines import _gmm_fit
from deft_jax.classify import losses
from deft_jax.classify import step as classify_step

# Two examples, three classes. Softmax of [ln 1, ln 2, ln 1] is [0.25, 0.5, 0.25]; of [0, 0, 0] a third each.
LOGITS = jnp.asarray([[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]])
LABELS = jnp.asarray([1, 2])
P_Y = np.asarray([0.5, 1.0 / 3.0])


def test_ce_gce_sce_equal_their_formulas_on_hand_computed_examples():
  np.testing.assert_allclose(losses.cross_entropy(LOGITS, LABELS), -np.log(P_Y), rtol=1e-6)
  q = 0.7
  np.testing.assert_allclose(losses.generalized_cross_entropy(LOGITS, LABELS, q), (1 - P_Y ** q) / q, rtol=1e-6)
  # q = 1 is MAE-like: 1 - p_y.
  np.testing.assert_allclose(losses.generalized_cross_entropy(LOGITS, LABELS, 1.0), 1 - P_Y, rtol=1e-6)
  # RCE = -sum_k p_k log onehot_k with log 0 -> log 1e-4: the wrong-class mass times -log(1e-4).
  rce = (1 - P_Y) * -np.log(1e-4)
  np.testing.assert_allclose(losses.symmetric_cross_entropy(LOGITS, LABELS, 0.1, 1.0),
                             0.1 * -np.log(P_Y) + rce, rtol=1e-5)
  with pytest.raises(ValueError, match="q"):
    losses.generalized_cross_entropy(LOGITS, LABELS, 0.0)


def test_elr_equals_its_formula_and_its_memory_changes_only_at_the_batch_indices():
  n, c, beta, lam = 5, 3, 0.3, 5.0
  memory = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(c), n), jnp.float32)
  index = jnp.asarray([3, 1, 0])
  valid = jnp.asarray([True, True, False])  # the last row is padding (index 0 must not be written)
  logits = jnp.concatenate([LOGITS, jnp.zeros((1, c))])
  labels = jnp.asarray([1, 2, 0])
  new_memory, t = losses.elr_update(memory, logits, index, valid, beta)
  p = np.asarray([[0.25, 0.5, 0.25], [1 / 3] * 3, [1 / 3] * 3])
  want_t = beta * np.asarray(memory)[[3, 1, 0]] + (1 - beta) * p
  np.testing.assert_allclose(t, want_t, rtol=1e-5)
  changed = np.flatnonzero(~np.isclose(np.asarray(new_memory), np.asarray(memory)).all(1))
  assert changed.tolist() == [1, 3]
  np.testing.assert_allclose(new_memory[3], want_t[0], rtol=1e-5)
  np.testing.assert_allclose(new_memory[1], want_t[1], rtol=1e-5)
  got = losses.elr_loss(logits, labels, t, lam)
  want = -np.log(p[np.arange(3), [1, 2, 0]]) + lam * np.log(1 - (want_t * p).sum(1))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_elr_regulariser_gradient_flows_through_predictions_not_targets():
  t = jnp.asarray([[0.1, 0.8, 0.1]])
  g_t = jax.grad(lambda tt: losses.elr_loss(LOGITS[:1], LABELS[:1], tt, 5.0).sum())(t)
  assert np.all(np.asarray(g_t) == 0)
  g_reg = jax.grad(lambda z: losses.elr_loss(z, LABELS[:1], t, 5.0).sum()
                   - losses.cross_entropy(z, LABELS[:1]).sum())(LOGITS[:1])
  # Increasing the logit the memory agrees with (class 1) lowers log(1 - <t, p>).
  assert float(g_reg[0, 1]) < 0


def test_masked_mean_excludes_padding_and_gives_zero_on_an_empty_batch():
  x = jnp.asarray([1.0, 3.0, 100.0])
  assert float(losses.masked_mean(x, jnp.asarray([True, True, False]))) == 2.0
  assert float(losses.masked_mean(x, jnp.zeros(3, bool))) == 0.0


def test_per_example_loss_dispatch_and_unknown_name():
  params = dict(gce_q=0.5, sce_alpha=1.0, sce_beta=1.0, elr_lambda=3.0, elr_beta=0.7)
  np.testing.assert_allclose(losses.per_example_loss("gce", LOGITS, LABELS, params),
                             (1 - P_Y ** 0.5) / 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown adapt.loss"):
    losses.per_example_loss("mae", LOGITS, LABELS, params)


def test_small_loss_keeps_the_smallest_fraction_of_valid_examples_only():
  per = jnp.asarray([0.9, 0.1, 0.5, 0.0, 0.3, 0.7])
  valid = jnp.asarray([True, True, True, False, True, True])  # the smallest loss is padding
  keep = np.asarray(classify_step.small_loss_keep(per, valid, 0.4))  # floor(0.6 * 5) = 3 kept
  assert keep.tolist() == [False, True, True, False, True, False]
  assert np.asarray(classify_step.small_loss_keep(per, valid, 0.0)).tolist() == valid.tolist()
  assert np.asarray(classify_step.small_loss_keep(per, jnp.zeros(6, bool), 0.5)).sum() == 0


def test_small_loss_rate_follows_co_teachings_linspace_over_the_warmup():
  """Was r * min(e / W, 1) (r reached one epoch after the warm-up); co-teaching and the reference use
  linspace(0, r, W)[e] for the W warm-up epochs, then r."""
  s = classify_step.StepSettings(loss_mask="small_loss", small_loss_rate=0.4, warmup_epochs=5)
  rates = [float(classify_step.small_loss_rate(s, jnp.int32(e))) for e in range(7)]
  np.testing.assert_allclose(rates, list(np.linspace(0, 0.4, 5)) + [0.4, 0.4], rtol=1e-6)
  one = classify_step.StepSettings(loss_mask="small_loss", small_loss_rate=0.4, warmup_epochs=1)
  np.testing.assert_allclose([float(classify_step.small_loss_rate(one, jnp.int32(e))) for e in range(3)],
                             [0.0, 0.4, 0.4], rtol=1e-6)


def test_label_margin_is_label_logit_minus_best_other():
  z = jnp.asarray([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
  np.testing.assert_allclose(classify_step.label_margin(z, jnp.asarray([1, 2])), [1.0, -4.0])


def test_gmm_recovers_a_two_component_mixture_and_its_posterior_split():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(0.2, 0.05, 7000), rng.normal(0.7, 0.1, 3000)])
  model = _gmm_fit.fit(x, reg_covar=0.0, max_iter=200, tol=1e-9)
  np.testing.assert_allclose(model.means, [0.2, 0.7], atol=0.01)
  np.testing.assert_allclose(model.weights, [0.7, 0.3], atol=0.01)
  np.testing.assert_allclose(np.sqrt(model.variances), [0.05, 0.1], atol=0.01)
  post = model.posterior(np.asarray([0.1, 0.2, 0.6, 0.9]))[:, 0]
  assert (post > 0.5).tolist() == [True, True, False, False]
  np.testing.assert_allclose(model.posterior(x).sum(1), 1.0, rtol=1e-9)


def test_gmm_clean_posterior_normalises_and_handles_constant_losses():
  p, log_odds, model = _gmm_fit.clean_posterior(np.concatenate([np.full(50, 10.0), np.full(50, 30.0)]) +
                                           np.random.default_rng(1).normal(0, 0.1, 100))
  assert model is not None and (p[:50] > 0.5).all() and (p[50:] < 0.5).all()
  np.testing.assert_array_equal(log_odds > 0, p > 0.5)
  p, log_odds, model = _gmm_fit.clean_posterior(np.full(10, 2.0))
  assert model is None and (p == 1).all()
  with pytest.raises(ValueError, match="two finite"):
    _gmm_fit.fit(np.asarray([1.0]))
