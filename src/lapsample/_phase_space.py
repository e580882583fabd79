"""Phase points and the flat log density that integrators evaluate."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._marginal.base import AbstractMarginal, MarginalAux
from ._misc import all_finite, keep_warm_start, TreeRaveller, WarmStart
from ._results import RESULTS


class Trail(eqx.Module):
    """The evaluation before a phase point's own along its trajectory (its flat
    position and latent mode), from which the next mode is predicted."""

    position: Float[Array, " n"]
    theta_star: PyTree[Array]


class PhasePoint(eqx.Module):
    """A point of phase space, with everything a trajectory needs to reuse.

    - `position`: the flat position (`phi` raveled).
    - `momentum`: the flat momentum.
    - `logdensity`: the marginal log density at `position` (`-inf` where its
      evaluation failed).
    - `logdensity_grad`: its flat gradient (zero where the evaluation failed).
    - `aux`: the marginal's [`lapsample.MarginalAux`][] at `position`; its
      `theta_star` warm-starts the next evaluation.
    - `trail`: the position and mode of the evaluation before this one, for a
      marginal that takes a predicted warm start (`takes_warm_start_pair`);
      `None` otherwise.
    """

    position: Float[Array, " n"]
    momentum: Float[Array, " n"]
    logdensity: Float[Array, ""]
    logdensity_grad: Float[Array, " n"]
    aux: MarginalAux
    trail: Trail | None = None


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

    def trail(
        self, position: Float[Array, " n"], theta_star: PyTree[Array] | None
    ) -> Trail | None:
        """What a phase point at `position` with mode `theta_star` leaves behind for
        the next evaluation's prediction (`None` unless the marginal takes one)."""
        if theta_star is None or not self.marginal.takes_warm_start_pair:
            return None
        return Trail(position, theta_star)

    def warm_start(
        self,
        trail: Trail | None,
        position: Float[Array, " n"],
        theta_star: PyTree[Array] | None,
        new_position: Float[Array, " n"],
    ) -> WarmStart | PyTree[Array] | None:
        """The warm start of an evaluation at `new_position`, moving from a point at
        `position` with mode `theta_star` and `trail`: `theta_star` itself, or with
        a trail a [`lapsample.WarmStart`][] that adds the secant prediction
        `theta_star + s (theta_star - trail.theta_star)`, `s` the projection of this
        move on the last (`s = 1` along a straight, even trajectory; `0` where
        there was no last move, as at a trajectory's first step)."""
        if trail is None:
            return theta_star
        last = position - trail.position
        norm = jnp.dot(last, last)
        positive = norm > 0
        scale = jnp.where(
            positive,
            jnp.dot(new_position - position, last) / jnp.where(positive, norm, 1.0),
            0.0,
        )
        predicted = jax.tree.map(
            lambda now, before: now + scale.astype(now.dtype) * (now - before),
            theta_star,
            trail.theta_star,
        )
        return WarmStart(theta_star, predicted)

    def point(
        self,
        position: Float[Array, " n"],
        momentum: Float[Array, " n"],
        theta_guess: PyTree[Array] | None,
    ) -> PhasePoint:
        """A [`lapsample.PhasePoint`][] at `position` with `momentum` (its own
        trail: the first step from it has no last move to extrapolate)."""
        logdensity, grad, aux = self(position, theta_guess)
        trail = self.trail(position, aux.theta_star)
        return PhasePoint(position, momentum, logdensity, grad, aux, trail)
