"""Groups of `SampleResults.to_arviz`: the posterior variables in the order the
user wrote them, and the pointwise log-likelihoods of the draws for ArviZ's
`log_likelihood` group (`az.loo`, `az.waic`, `az.compare`)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from .._marginal.base import AbstractLaplaceMarginal, AbstractMarginal
from .._marginal.latent_gaussian import LatentGaussianMarginal
from .._misc import variable_names


# The name of the observed variable in the `log_likelihood` group when the
# likelihood gives one array (ArviZ's functions pick it without `var_name`).
OBSERVED_NAME = "y"


def posterior_variables(
    phi: PyTree[np.ndarray],
    theta: PyTree[np.ndarray] | None,
    postprocess: Callable[..., dict[str, Any]] | None,
    phi_order: tuple[str, ...] | None,
) -> dict[str, np.ndarray]:
    """The posterior group: `postprocess(phi, theta)`, or `phi` and `theta` named
    by `variable_names` (a `theta` name that clashes with a `phi` name gets a
    `theta.` prefix). Ordered as `phi_order` (the user's initial position), then
    the rest of `phi`, then `theta`, then anything else (e.g. a NumPyro model's
    deterministic sites)."""
    phi_names = [name for name, _ in variable_names(phi, "phi")]
    theta_pairs = [] if theta is None else variable_names(theta, "theta")
    theta_names = []
    if postprocess is not None:
        out = {name: np.asarray(v) for name, v in postprocess(phi, theta).items()}
        theta_names = [name for name, _ in theta_pairs]
    else:
        out = {name: np.asarray(leaf) for name, leaf in variable_names(phi, "phi")}
        for name, leaf in theta_pairs:
            name = f"theta.{name}" if name in out else name
            theta_names.append(name)
            out[name] = np.asarray(leaf)
    first = list(phi_order or ()) + phi_names + theta_names
    rank = {name: i for i, name in reversed(list(enumerate(first)))}
    position = {name: i for i, name in enumerate(out)}
    names = sorted(out, key=lambda n: (rank.get(n, len(first)), position[n]))
    return {name: out[name] for name in names}


@eqx.filter_jit
def _over_draws(fn: Callable, theta, phi):
    """`fn(theta, phi)` of one draw, mapped over the leading `(chains, draws)`
    axes."""
    return jax.vmap(jax.vmap(fn))(theta, phi)


def _named(value) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        return {str(name): np.asarray(v) for name, v in value.items()}
    return {OBSERVED_NAME: np.asarray(value)}


class _LatentGaussianPointwise(eqx.Module):
    """`log p(y_i | eta_i, phi)` of every observation of a
    `LatentGaussianMarginal`, from its likelihood's own terms, at the linear
    predictor `eta = theta`, or `theta[index]` / `design @ theta` plus
    `offset(phi)` for a marginal with an observation map (GLMMs)."""

    marginal: LatentGaussianMarginal

    def __call__(self, theta, phi):
        m = self.marginal
        eta = jnp.asarray(theta)
        # The observation map and offset of GLMMs; `None` when unused.
        index, design, offset = m.index, m.design, m.offset
        if design is not None:
            eta = jnp.asarray(design) @ eta
        elif index is not None:
            eta = eta[index]
        if offset is not None:
            eta = eta + jnp.asarray(offset(phi), eta.dtype)
        params = None if m.likelihood_params is None else m.likelihood_params(phi)
        return m.likelihood.derivatives(eta, params)[0]


class _UserPointwise(eqx.Module):
    fn: Callable

    def __call__(self, theta, phi):
        out = self.fn(theta, phi)
        if isinstance(out, dict):
            return {name: jnp.asarray(value) for name, value in out.items()}
        return jnp.asarray(out)


def pointwise_log_likelihood(
    spec: bool | Callable | None,
    marginal: AbstractMarginal,
    phi: PyTree[np.ndarray],
    theta: PyTree[np.ndarray] | None,
    numpyro_fn: Callable[..., dict[str, Any]] | None,
) -> dict[str, np.ndarray] | None:
    """The `log_likelihood` group of `SampleResults.to_arviz(log_likelihood=spec)`:
    `{name: array (chains, draws, *observations)}`, or `None` to leave it out.

    `spec` is `False` (leave it out), a user function `(theta, phi) -> array or
    dict of arrays` for one draw, `True` (the model's own, or an error saying why
    there is none) or `None` (the model's own where there is one and the latent
    was drawn, else left out).
    """
    if spec is False:
        return None
    has_latent = isinstance(marginal, AbstractLaplaceMarginal)
    if callable(spec):
        if has_latent and theta is None:
            raise ValueError(
                "`to_arviz(log_likelihood=...)` evaluates the likelihood at draws of "
                "the latent `theta`, and these results have none: run "
                "`lapsample.sample(..., sample_theta=True)`."
            )
        return _named(_over_draws(_UserPointwise(spec), theta, phi))
    if spec is not None and spec is not True:
        raise TypeError(
            "`log_likelihood` must be `None` (the model's own when it has one), "
            "`True`, `False` or a function `(theta, phi) -> log p(y_i | theta, phi)` "
            f"per observation; got {type(spec).__name__}."
        )
    builtin = numpyro_fn is not None or isinstance(marginal, LatentGaussianMarginal)
    if not builtin:
        if spec is None:
            return None
        raise ValueError(
            f"A {type(marginal).__name__} has no likelihood of its own that lapsample "
            "can split into observations (only `LatentGaussianMarginal` and NumPyro "
            "models do): pass `to_arviz(log_likelihood=fn)` with `fn(theta, phi)` "
            "returning `log p(y_i | theta, phi)`, one value per observation."
        )
    if theta is None:
        if spec is None:
            return None
        raise ValueError(
            "The pointwise log-likelihood needs draws of the latent `theta` (it is "
            "`log p(y_i | theta, phi)` at each draw): run "
            "`lapsample.sample(..., sample_theta=True)`."
        )
    if numpyro_fn is not None:
        return {name: np.asarray(v) for name, v in numpyro_fn(phi, theta).items()}
    assert isinstance(marginal, LatentGaussianMarginal)
    return _named(_over_draws(_LatentGaussianPointwise(marginal), theta, phi))
