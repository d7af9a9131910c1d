"""A two-component one-dimensional Gaussian mixture fitted by EM (NumPy), for the loss-based baselines (GMM, TURN).

They fit it to min-max normalised per-sample losses; the component with the lower mean models the clean
samples, and a sample is clean when its posterior under that component exceeds 0.5. ``reg_covar`` is added to
both variances, as DivideMix does (5e-4), so that a component cannot collapse onto one point. The reference's
fit is scikit-learn's ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)``: the
defaults here. Initialisation: two k-means (Lloyd) iterations from the 25th / 75th percentiles, then EM until
the mean log-likelihood improves by less than ``tol`` or ``max_iter`` iterations are done.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deft_jax.errors import ConfigError

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclasses.dataclass(frozen=True)
class GaussianMixture1D:
  """Components sorted by mean: index 0 is the low-mean component."""

  weights: np.ndarray
  means: np.ndarray
  variances: np.ndarray
  log_likelihood: float = float("nan")
  iterations: int = 0

  def log_joint(self, x: np.ndarray) -> np.ndarray:
    """[n, 2]: log(w_k N(x | mu_k, var_k))."""
    x = np.asarray(x, np.float64)[:, None]
    return (np.log(self.weights)[None] - 0.5 * (_LOG_2PI + np.log(self.variances)[None])
            - 0.5 * (x - self.means[None]) ** 2 / self.variances[None])

  def log_odds(self, x: np.ndarray) -> np.ndarray:
    """[n] log(posterior of component 0 / posterior of component 1), in float64: monotone in the posterior and,
    unlike it, never rounded to exactly 0 or 1 (a ranking score without ties)."""
    lj = self.log_joint(x)
    return lj[:, 0] - lj[:, 1]

  def posterior(self, x: np.ndarray) -> np.ndarray:
    """[n, 2] responsibilities."""
    lj = self.log_joint(x)
    lj = lj - lj.max(1, keepdims=True)
    p = np.exp(lj)
    return p / p.sum(1, keepdims=True)


def _params(x: np.ndarray, resp: np.ndarray, reg_covar: float):
  nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
  means = (resp * x[:, None]).sum(0) / nk
  var = (resp * (x[:, None] - means[None]) ** 2).sum(0) / nk + reg_covar
  return nk / len(x), means, var


def fit(x, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4) -> GaussianMixture1D:
  """Maximum-likelihood two-component mixture of the values ``x`` (at least two)."""
  x = np.asarray(x, np.float64).reshape(-1)
  if x.size < 2 or not np.isfinite(x).all():
    raise ConfigError(f"the GMM needs at least two finite values, got {x.size} (finite: {np.isfinite(x).sum()})")
  centres = np.percentile(x, [25.0, 75.0])
  for _ in range(2):
    hard = np.abs(x[:, None] - centres[None]).argmin(1)
    centres = np.asarray([x[hard == k].mean() if (hard == k).any() else centres[k] for k in range(2)])
  resp = np.eye(2)[np.abs(x[:, None] - centres[None]).argmin(1)]
  w, mu, var = _params(x, resp, reg_covar)
  w = np.clip(w, 1e-6, None)
  prev, it = -np.inf, 0
  for it in range(1, max_iter + 1):
    model = GaussianMixture1D(w / w.sum(), mu, var)
    lj = model.log_joint(x)
    m = lj.max(1, keepdims=True)
    ll_each = m[:, 0] + np.log(np.exp(lj - m).sum(1))
    ll = float(ll_each.mean())
    resp = np.exp(lj - ll_each[:, None])
    w, mu, var = _params(x, resp, reg_covar)
    w = np.clip(w, 1e-12, None)
    if abs(ll - prev) < tol:
      break
    prev = ll
  order = np.argsort(mu)
  w = w / w.sum()
  return GaussianMixture1D(w[order], mu[order], var[order], ll, it)


def clean_posterior(losses, **kw) -> tuple[np.ndarray, np.ndarray, GaussianMixture1D | None]:
  """(posterior of the low-loss component per sample, its log-odds, the mixture) on min-max normalised
  ``losses``.

  All-equal losses carry no information: every sample then gets posterior 1 (nothing is rejected) and a
  log-odds of 0 minus its loss (still a ranking).
  """
  x = np.asarray(losses, np.float64)
  lo, hi = x.min(), x.max()
  if not hi - lo > 1e-12:
    return np.ones(x.shape, np.float32), -x, None
  x = (x - lo) / (hi - lo)
  model = fit(x, **kw)
  return model.posterior(x)[:, 0].astype(np.float32), model.log_odds(x), model
