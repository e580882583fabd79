"""Conditionally independent likelihoods for `LatentGaussianMarginal`, each with
its first three derivatives in the latent."""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree, Scalar

from .._custom_types import Derivatives
from .._validate import as_float


def _y_eta(y, eta):
    """`y·eta`, with `0·(-inf) = 0`: a zero count with zero exposure (log exposure
    `-inf`) is a certain event, log probability 0."""
    return jnp.where(y == 0, 0.0, y * eta)


def _linear_predictor(theta, log_offset):
    return theta if log_offset is None else theta + log_offset


def _concrete(x) -> np.ndarray | None:
    """`x` as a NumPy array, or `None` when it is traced (data passed through
    `jit` or `vmap` cannot be checked in Python)."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _check_data(cls: str, y, exposure=None, offset=None, kind="real") -> None:
    """Refuse, at construction, data that no term of the likelihood can take:
    non-finite values, counts that are negative or not whole numbers, binary
    outcomes outside {0, 1}, negative exposures, and a positive count with zero
    exposure (probability 0). Skipped for traced data."""
    for name, value in (("y", y), ("exposure", exposure), ("offset", offset)):
        arr = _concrete(value)
        if arr is not None and not np.all(np.isfinite(arr)):
            where = np.argwhere(~np.isfinite(arr)).ravel()[:5].tolist()
            raise ValueError(
                f"`{cls}({name}=...)` has non-finite entries (NaN or inf) at "
                f"{where}. Drop those observations, or impute them before building "
                "the likelihood."
            )
    arr = _concrete(y)
    if arr is not None and kind == "count":
        bad = (arr < 0) | (arr != np.round(arr))
        if np.any(bad):
            where = np.flatnonzero(np.ravel(bad))[:5].tolist()
            raise ValueError(
                f"`{cls}(y=...)` must hold counts (non-negative whole numbers), but "
                f"entries {where} are {np.ravel(arr)[where].tolist()}. Pass the raw "
                "counts (not rates or transformed values), or use `Gaussian` for "
                "continuous data."
            )
    if arr is not None and kind == "binary":
        bad = (arr != 0) & (arr != 1)
        if np.any(bad):
            where = np.flatnonzero(np.ravel(bad))[:5].tolist()
            raise ValueError(
                f"`{cls}(y=...)` must hold 0 or 1, but entries {where} are "
                f"{np.ravel(arr)[where].tolist()}. Code the outcomes as 0/1 (e.g. "
                "`(y == level).astype(float)`)."
            )
    expo = _concrete(exposure)
    if expo is not None:
        if np.any(expo < 0):
            raise ValueError(
                f"`{cls}(exposure=...)` must be non-negative (it multiplies the "
                f"rate), but its smallest entry is {float(np.min(expo))}. Pass "
                "the exposures themselves, not their logarithms (use `offset=` for "
                "a log-scale offset)."
            )
        if arr is not None and np.any(
            np.broadcast_to(expo == 0, arr.shape) & (arr > 0)
        ):
            raise ValueError(
                f"`{cls}`: a positive count with exposure 0 has probability 0. "
                "Check the exposures, or drop those observations."
            )


def _log_offset(y, exposure, offset) -> Array | None:
    parts = []
    if exposure is not None:
        parts.append(jnp.log(as_float(exposure)))
    if offset is not None:
        parts.append(as_float(offset))
    if not parts:
        return None
    return jnp.broadcast_to(sum(parts[1:], parts[0]), y.shape)


class AbstractLikelihood(eqx.Module):
    """A log-likelihood `sum_i log p(y_i | theta_i, params)` whose terms each depend
    on one latent value `theta_i`, so that its Hessian in `theta` is diagonal.

    `params` is whatever the marginal's `likelihood_params(phi)` returns (e.g. a
    dispersion or a noise scale), or `None`. Subclasses implement `derivatives`,
    which returns the terms and their first three derivatives in `theta`,
    elementwise; the latent-Gaussian marginal needs nothing else.
    """

    # Whether `log p(y | theta)` is quadratic in `theta` (its second derivative
    # does not depend on `theta`): Newton's first full step then lands on the mode,
    # and the latent-Gaussian marginal stops there. Only a subclass that is exactly
    # quadratic sets it.
    quadratic: ClassVar[bool] = False

    @abc.abstractmethod
    def derivatives(
        self, theta: Float[Array, " n"], params: PyTree[ArrayLike]
    ) -> Derivatives:
        """**Arguments:**

        - `theta`: the latent values, one per observation.
        - `params`: the likelihood's own hyperparameters, or `None`.

        **Returns:**

        `(l, dl, d2l, d3l)`, arrays of shape `(n,)`: `l_i = log p(y_i | theta_i)` and
        its first, second and third derivatives in `theta_i`.
        """

    def log_density(
        self, theta: Float[Array, " n"], params: PyTree[ArrayLike]
    ) -> Scalar:
        """`sum_i log p(y_i | theta_i, params)`."""
        return jnp.sum(self.derivatives(theta, params)[0])


class PoissonLog(AbstractLikelihood):
    r"""Poisson counts with a log link: `y_i ~ Poisson(exposure_i · exp(theta_i +
    offset_i))`.

    $$\ell_i = y_i\eta_i - e^{\eta_i} - \log y_i!,\quad \eta_i = \theta_i + \log
    E_i + o_i;\qquad \ell_i' = y_i - e^{\eta_i},\ \ell_i'' = \ell_i''' = -e^{\eta_i}.$$

    Has no hyperparameters (`params` is ignored).
    """

    y: Float[Array, " n"]
    log_offset: Float[Array, " n"] | None

    def __init__(
        self,
        y: ArrayLike,
        exposure: ArrayLike | None = None,
        offset: ArrayLike | None = None,
    ):
        _check_data("PoissonLog", y, exposure, offset, kind="count")
        self.y = as_float(y)
        self.log_offset = _log_offset(self.y, exposure, offset)

    def derivatives(self, theta, params):
        del params
        eta = _linear_predictor(theta, self.log_offset)
        rate = jnp.exp(eta)
        value = _y_eta(self.y, eta) - rate - jax.scipy.special.gammaln(self.y + 1)
        return value, self.y - rate, -rate, -rate


PoissonLog.__init__.__doc__ = """**Arguments:**

- `y`: the counts, shape `(n,)`.
- `exposure`: optional positive exposures `E_i` (e.g. expected counts); the rate is
    multiplied by them.
- `offset`: optional additive offset on the log rate.
"""


class NegBinomial2Log(AbstractLikelihood):
    r"""Negative-binomial counts with mean `mu_i = exposure_i · exp(theta_i +
    offset_i)` and dispersion `kappa` (variance `mu + mu²/kappa`), as Stan's
    `neg_binomial_2_log`.

    With `p_i = mu_i / (mu_i + kappa)`: `ℓ' = y - (y + kappa) p`,
    `ℓ'' = -(y + kappa) p (1 - p)`, `ℓ''' = ℓ'' (1 - 2p)`.

    `params` (from the marginal's `likelihood_params(phi)`) is the dispersion
    `kappa > 0`, a scalar or one value per observation.
    """

    y: Float[Array, " n"]
    log_offset: Float[Array, " n"] | None

    def __init__(
        self,
        y: ArrayLike,
        exposure: ArrayLike | None = None,
        offset: ArrayLike | None = None,
    ):
        _check_data("NegBinomial2Log", y, exposure, offset, kind="count")
        self.y = as_float(y)
        self.log_offset = _log_offset(self.y, exposure, offset)

    def derivatives(self, theta, params):
        kappa = jnp.asarray(params)
        y = self.y
        eta = _linear_predictor(theta, self.log_offset)
        log_kappa = jnp.log(kappa)
        log_mu_plus_kappa = jnp.logaddexp(eta, log_kappa)
        gammaln = jax.scipy.special.gammaln
        value = (
            gammaln(y + kappa)
            - gammaln(y + 1)
            - gammaln(kappa)
            + _y_eta(y, eta)
            + kappa * log_kappa
            - (y + kappa) * log_mu_plus_kappa
        )
        p = jax.nn.sigmoid(eta - log_kappa)
        d2 = -(y + kappa) * p * (1 - p)
        return value, y - (y + kappa) * p, d2, d2 * (1 - 2 * p)


NegBinomial2Log.__init__.__doc__ = """**Arguments:**

- `y`: the counts, shape `(n,)`.
- `exposure`, `offset`: as for [`lapsample.PoissonLog`][].
"""


class BernoulliLogit(AbstractLikelihood):
    r"""Binary outcomes with a logit link: `y_i ~ Bernoulli(sigmoid(theta_i +
    offset_i))`.

    With `s = sigmoid(eta)`: `ℓ' = y - s`, `ℓ'' = -s(1 - s)`,
    `ℓ''' = -s(1 - s)(1 - 2s)`. Has no hyperparameters.
    """

    y: Float[Array, " n"]
    offset: Float[Array, " n"] | None

    def __init__(self, y: ArrayLike, offset: ArrayLike | None = None):
        _check_data("BernoulliLogit", y, offset=offset, kind="binary")
        self.y = as_float(y)
        self.offset = _log_offset(self.y, None, offset)

    def derivatives(self, theta, params):
        del params
        eta = _linear_predictor(theta, self.offset)
        s = jax.nn.sigmoid(eta)
        value = self.y * eta - jax.nn.softplus(eta)
        d2 = -s * (1 - s)
        return value, self.y - s, d2, d2 * (1 - 2 * s)


BernoulliLogit.__init__.__doc__ = """**Arguments:**

- `y`: the outcomes, 0 or 1, shape `(n,)`.
- `offset`: optional additive offset on the logit.
"""


class Gaussian(AbstractLikelihood):
    r"""Gaussian observations `y_i ~ N(theta_i + offset_i, sigma²)`.

    `ℓ' = (y - eta)/sigma²`, `ℓ'' = -1/sigma²`, `ℓ''' = 0`; the Laplace approximation
    is then exact. `params` (from the marginal's `likelihood_params(phi)`) is the
    noise scale `sigma > 0`, a scalar or one value per observation.
    """

    y: Float[Array, " n"]
    offset: Float[Array, " n"] | None
    quadratic: ClassVar[bool] = True

    def __init__(self, y: ArrayLike, offset: ArrayLike | None = None):
        _check_data("Gaussian", y, offset=offset)
        self.y = as_float(y)
        self.offset = _log_offset(self.y, None, offset)

    def derivatives(self, theta, params):
        sigma = jnp.asarray(params)
        eta = _linear_predictor(theta, self.offset)
        resid = self.y - eta
        precision = jnp.broadcast_to(1 / sigma**2, resid.shape)
        value = (
            -0.5 * resid**2 * precision - jnp.log(sigma) - 0.5 * math.log(2 * math.pi)
        )
        return value, resid * precision, -precision, jnp.zeros_like(resid)


Gaussian.__init__.__doc__ = """**Arguments:**

- `y`: the observations, shape `(n,)`.
- `offset`: optional known shift of the mean.
"""
