"""Phase points and the flat log density that integrators evaluate."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._marginal.base import AbstractMarginal, MarginalAux
from ._misc import all_finite, keep_warm_start, TreeRaveller
from ._results import RESULTS


class PhasePoint(eqx.Module):
    """A point of phase space, with everything a trajectory needs to reuse.

    - `position`: the flat position (`phi` raveled).
    - `momentum`: the flat momentum.
    - `logdensity`: the marginal log density at `position` (`-inf` where its
      evaluation failed).
    - `logdensity_grad`: its flat gradient (zero where the evaluation failed).
    - `aux`: the marginal's [`lapsample.MarginalAux`][] at `position`; its
      `theta_star` warm-starts the next evaluation.
    """

    position: Float[Array, " n"]
    momentum: Float[Array, " n"]
    logdensity: Float[Array, ""]
    logdensity_grad: Float[Array, " n"]
    aux: MarginalAux


class FlatLogDensity(eqx.Module):
    """A marginal seen through a flat position, with failures sanitised.

    Calling it returns `(logdensity, grad, aux)` for a flat position and a warm start
    for the latent. A non-finite value or gradient, or a marginal whose `aux.result`
    is not `successful`, gives `logdensity = -inf`, a zero gradient and a failure
    code in `aux.result`, so a bad evaluation can only ever be rejected.
    """

    marginal: AbstractMarginal
    raveller: TreeRaveller

    def __call__(
        self, position: Float[Array, " n"], theta_guess: PyTree[Array] | None
    ) -> tuple[Float[Array, ""], Float[Array, " n"], MarginalAux]:
        def value(flat):
            return self.marginal(self.raveller.unravel(flat), theta_guess)

        (logdensity, aux), grad = jax.value_and_grad(value, has_aux=True)(position)
        logdensity = jnp.asarray(logdensity, position.dtype)
        finite = jnp.isfinite(logdensity) & all_finite(grad)
        result = RESULTS.where(
            (aux.result != RESULTS.successful) | finite,
            aux.result,
            RESULTS.nonfinite_log_density,
        )
        ok = result == RESULTS.successful
        aux = MarginalAux(
            theta_star=keep_warm_start(aux.theta_star, theta_guess),
            result=result,
            num_steps=jnp.asarray(aux.num_steps, jnp.int32),
        )
        logdensity = jnp.where(ok, logdensity, -jnp.inf)
        grad = jnp.where(ok, grad, jnp.zeros_like(grad))
        return logdensity, grad, aux

    def point(
        self,
        position: Float[Array, " n"],
        momentum: Float[Array, " n"],
        theta_guess: PyTree[Array] | None,
    ) -> PhasePoint:
        """A [`lapsample.PhasePoint`][] at `position` with `momentum`."""
        logdensity, grad, aux = self(position, theta_guess)
        return PhasePoint(position, momentum, logdensity, grad, aux)
