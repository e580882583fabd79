"""`LaplaceMarginal`: the Laplace marginal of any `log_joint(theta, phi)`, with a
pluggable inner solver and Hessian strategy."""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree

from .._hessian.auto import AutoHessian, warn_if_dense_is_large
from .._hessian.base import (
    AbstractHessianStrategy,
    AbstractStructuredHessian,
    probe_vector,
    quadratic_form,
    second_directional,
)
from .._inner import AbstractInnerSolver, Newton
from .._misc import map_starts, NegativeLogJoint, previous_mode, TreeRaveller
from .._results import failure_fix, RESULTS
from .._validate import check_float_tree, nonfinite_report, warn_if_low_precision
from .ad import laplace_log_marginal
from .base import (
    AbstractLaplaceMarginal,
    AbstractMarginal,
    LaplaceConditional,
    MarginalAux,
    result_at,
)


@eqx.filter_jit
def _value_and_grads(log_joint, theta, phi):
    return jax.value_and_grad(log_joint, argnums=(0, 1))(theta, phi)


@eqx.filter_jit
def _curvatures_positive(fn, theta, phi):
    directions = jnp.stack([jnp.ones_like(theta), probe_vector(theta) + 0.5])
    curvatures = jax.vmap(lambda v: second_directional(fn, theta, phi, v))(directions)
    return jnp.all(curvatures > 0)


class LaplaceMarginal(AbstractLaplaceMarginal):
    r"""The Laplace approximation to the marginal `log p(phi | y)` (up to a constant).

    For `log_joint(theta, phi) = log p(theta, phi, y)`,

    $$\log \hat p(\phi \mid y) = \log p(\theta^*, \phi, y) - \tfrac12 \log\det H
    + \tfrac d2 \log 2\pi,\qquad H = -\nabla^2_\theta \log p(\theta^*, \phi, y),$$

    with `theta* = argmax_theta log_joint(theta, phi)` found by `inner_solver`. It is
    exact when `theta | phi, y` is Gaussian.

    The gradient in `phi` comes from the implicit function theorem through one custom
    VJP: one Hessian and one factorisation per evaluation, shared by the
    log-determinant, the adjoint solve and the log-determinant's gradient; the solver
    is never unrolled. A failed inner solve or a Hessian that is not positive definite
    gives `log_density = -inf`, a zero gradient and the code in `aux.result`, so one
    bad point never stops a batch of chains.

    **The Hessian strategy picks itself** unless `hessian=` is given: the default
    [`lapsample.AutoHessian`][] runs [`lapsample.detect_hessian`][] once, at
    `theta_init` and the first concrete `phi` it sees ([`lapsample.sample`][],
    `check`, `with_hessian_for`), before anything is compiled, and uses the
    cheapest strategy whose structure holds there (diagonal, block diagonal,
    banded, else dense); it logs the choice (logger `"lapsample"`, level INFO), the
    resolved marginal's repr shows it (`hessian_reason`), and so does
    `SampleResults.summary()`. The detection costs one compiled batch of about 100
    Hessian-vector products (about 2 CPU-seconds for `d = 300`, nearly all of it
    compilation; `docs/choosing-components.md` has the measurements). It reads
    the sparsity pattern near `theta_init`, so a coupling that appears only
    elsewhere is missed; the structured strategies check their structure at every
    mode, so that case is `RESULTS.structure_violated`, never a wrong value: pass
    `hessian=lapsample.DenseHessian()` (or a wider band) then. Evaluated under
    your own `jax.jit` without a concrete `phi`, the default is exactly
    `DenseHessian()` and logs a warning saying how to make the detection run. A
    dense Hessian with large `d` (over ~1 s per value and gradient or 1 GiB of
    temporaries, `d` ≳ 2,700) warns `lapsample.LargeDenseHessianWarning` before
    compiling.

    !!! info

        The custom VJP supports reverse mode (`jax.grad`, `jax.value_and_grad`);
        forward-mode derivatives in `phi` are not defined. Arrays that `log_joint`
        closes over are treated as constants.

    ??? cite "References"

        ```bibtex
        @inproceedings{margossian2020hamiltonian,
            title={Hamiltonian Monte Carlo using an adjoint-differentiated
                   Laplace approximation: Bayesian inference for latent
                   Gaussian models and beyond},
            author={Margossian, Charles C and Vehtari, Aki and Simpson, Daniel
                    and Agrawal, Raj},
            booktitle={Advances in Neural Information Processing Systems},
            year={2020}
        }
        ```
    """

    log_joint: Callable
    # Annotated loosely so that `__check_init__` gives the error message.
    theta_init: PyTree[Any]
    inner_solver: AbstractInnerSolver = Newton()
    hessian: AbstractHessianStrategy = AutoHessian()
    # Static: a description, not data (it names the strategy that was chosen).
    hessian_reason: str | None = eqx.field(default=None, static=True)
    predictor: bool = eqx.field(default=True, static=True)

    @property
    def takes_warm_start_pair(self) -> bool:
        return self.predictor and self.inner_solver.takes_warm_start_pair

    def __check_init__(self):
        if not callable(self.log_joint):
            raise TypeError(
                "`log_joint` must be a callable `log_joint(theta, phi) -> scalar`, got "
                f"{type(self.log_joint).__name__}."
            )
        check_float_tree(self.theta_init, "theta_init", "`jnp.zeros(n)`")
        warn_if_low_precision(self.theta_init, "`theta_init`", stacklevel=4)
        if not isinstance(self.inner_solver, AbstractInnerSolver):
            raise TypeError(
                "`inner_solver` must be an `lapsample.AbstractInnerSolver` such as "
                f"`lapsample.Newton()`, got {type(self.inner_solver).__name__}."
            )
        if not isinstance(self.hessian, AbstractHessianStrategy):
            raise TypeError(
                "`hessian` must be an `lapsample.AbstractHessianStrategy` such as "
                f"`lapsample.DenseHessian()`, got {type(self.hessian).__name__}."
            )
        if not (self.hessian_reason is None or isinstance(self.hessian_reason, str)):
            raise TypeError(
                "`hessian_reason` is a description set by `with_hessian_for`; leave "
                f"it out (got {type(self.hessian_reason).__name__})."
            )
        size = sum(int(np.size(x)) for x in jtu.tree_leaves(self.theta_init))
        warn_if_dense_is_large(self.hessian, size, stacklevel=3)

    def with_hessian_for(self, phi: PyTree[ArrayLike]) -> "LaplaceMarginal":
        """This marginal with its [`lapsample.AutoHessian`][] resolved at `phi`: the
        Hessian strategy that [`lapsample.detect_hessian`][] finds at
        `(theta_init, phi)`, with the reason in `hessian_reason`.

        ```python
        marginal = lapsample.LaplaceMarginal(log_joint, theta_init)
        marginal = marginal.with_hessian_for(phi_init)  # e.g. DiagonalHessian()
        jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
        ```

        [`lapsample.sample`][] does this itself; call it to evaluate the marginal
        yourself under `jax.jit`. A marginal whose `hessian` was given is returned
        as it is; so is one called with a `phi` that is not concrete (a tracer),
        whose `AutoHessian` then evaluates as `DenseHessian()`.

        **Arguments:**

        - `phi`: a concrete value of the hyperparameters (e.g. the starting point).

        **Returns:**

        A `LaplaceMarginal`. Warns (`lapsample.LargeDenseHessianWarning`) when the
        detection picks a dense Hessian and `d` is large.
        """
        if not isinstance(self.hessian, AutoHessian):
            return self
        if any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(phi)):
            return self
        self._check_inputs(phi)
        strategy, reason = self.hessian.choose(self.log_joint, self.theta_init, phi)
        return dataclasses.replace(self, hessian=strategy, hessian_reason=reason)

    def check(self, phi: PyTree[ArrayLike]) -> None:
        """Check that `log_joint` works at `(theta_init, phi)`, before any compilation.

        Raises `TypeError`/`ValueError` with a message that names the problem and
        the fix: integer inputs; `theta_init` or `phi` with a structure or shapes that
        `log_joint` does not accept; an output that is not a floating scalar; a
        non-finite value or gradient at the starting point; a structured Hessian
        strategy whose structure does not hold at `theta_init`. Warns
        (`UserWarning`) when `phi` is float32 (as the constructor does for
        `theta_init`): Laplace marginals need float64. [`lapsample.sample`][] calls
        this on its initial position. With the default
        [`lapsample.AutoHessian`][], it checks with the strategy that the detection
        picks at `phi` (see `with_hessian_for`).

        **Arguments:**

        - `phi`: a concrete value of the hyperparameters.
        """
        resolved = self.with_hessian_for(phi)
        if resolved is not self:
            resolved.check(phi)
            return
        self._check_inputs(phi)
        fn = NegativeLogJoint(self.log_joint, self.raveller)
        theta0 = self.raveller.ravel(self.theta_init)
        phi = jtu.tree_map(jnp.asarray, phi)
        if isinstance(self.hessian, AbstractStructuredHessian):
            self.hessian.check_structure(fn, theta0, phi)
        self._check_concavity(fn, theta0, phi)

    def _check_inputs(self, phi) -> None:
        check_float_tree(phi, "phi", "`jnp.array(0.0)`")
        warn_if_low_precision(phi, "`phi`")
        try:
            out = jax.eval_shape(self.log_joint, self.theta_init, phi)
        except Exception as e:
            raise ValueError(
                "`log_joint(theta_init, phi)` failed while tracing with "
                f"{type(e).__name__}: {e}\nCheck that `theta_init` has the PyTree "
                "structure and shapes that `log_joint` expects for `theta` (its first "
                "argument, the latent) and `phi` those for its second argument (the "
                f"hyperparameters). Got theta_init shapes "
                f"{jtu.tree_map(jnp.shape, self.theta_init)} and phi shapes "
                f"{jtu.tree_map(jnp.shape, phi)}."
            ) from e
        if not (hasattr(out, "shape") and out.shape == ()):
            raise ValueError(
                "`log_joint(theta, phi)` must return a scalar log density, but it "
                f"returned {out}. Sum the terms (e.g. `.sum()`) to get one number."
            )
        if not jnp.issubdtype(out.dtype, jnp.inexact):
            raise ValueError(
                f"`log_joint(theta, phi)` returned dtype {out.dtype}; it must return a "
                "floating-point log density."
            )
        # Compiled once rather than run op by op: eagerly, every primitive of the
        # model and of its derivative is compiled on its own (dozens of small
        # compilations, about 2 s for a modest model).
        value, (grad_theta, grad_phi) = _value_and_grads(
            self.log_joint, self.theta_init, phi
        )
        if not np.isfinite(float(value)):
            inputs = ", ".join(
                r
                for r in (
                    nonfinite_report(self.theta_init, "theta_init"),
                    nonfinite_report(phi, "phi"),
                )
                if r
            )
            hint = (
                f"These inputs are not finite: {inputs}."
                if inputs
                else "Both inputs are finite, so the model itself gives "
                "log(0) or NaN there: check the data the log joint reads for NaN "
                "or inf (e.g. `np.isfinite(y).all()`; drop or impute missing "
                "values), pick a `phi` inside the support of the prior and a "
                "`theta_init` where the likelihood is positive (for count models, "
                "e.g. `log(y + 1)`)."
            )
            raise ValueError(
                f"`log_joint(theta_init, phi)` is {float(value)} at the starting "
                "point. " + hint
            )
        for grad, name in ((grad_theta, "theta"), (grad_phi, "phi")):
            report = nonfinite_report(grad, f"d log_joint / d {name}")
            if report:
                raise ValueError(
                    "`log_joint` is finite at the starting point but its gradient is "
                    f"not: {report}. Check the model for operations with infinite "
                    "slope there (sqrt(0), log near 0, abs)."
                )

    def _check_concavity(self, fn, theta0, phi) -> None:
        # Two second directional derivatives of the negative log joint at
        # theta_init (no d × d Hessian); a log joint that is not concave in theta
        # there (a sign error) shows up as a curvature <= 0. Only then is the
        # marginal itself evaluated (compiled), and only a failure there raises:
        # a model that is merely not concave at theta_init (a non-log-concave
        # likelihood) but fine at the mode passes.
        if bool(_curvatures_positive(fn, theta0, phi)):
            return
        result = result_at(self, phi)
        fix = failure_fix(result)
        if fix is not None:
            raise ValueError(
                "The Laplace marginal fails at the starting `phi` "
                f"({RESULTS[result].split('.')[0]}). {fix}"
            )

    @property
    def raveller(self) -> TreeRaveller:
        return TreeRaveller(self.theta_init)

    def _negative_log_joint(self, theta_flat, phi):
        fn = NegativeLogJoint(self.log_joint, self.raveller)
        # Closed-over tracers (e.g. data passed through an outer `jit`) become
        # explicit inputs, as custom derivative rules require.
        return eqx.filter_closure_convert(fn, theta_flat, phi)

    def __call__(self, phi, theta_guess=None):
        raveller = self.raveller
        guess = self.theta_init if theta_guess is None else theta_guess
        theta0 = map_starts(raveller.ravel, guess)
        fn = self._negative_log_joint(previous_mode(theta0), phi)
        value, theta_flat, result, num_steps = laplace_log_marginal(
            phi, fn, theta0, self.inner_solver, self.hessian
        )
        aux = MarginalAux(
            theta_star=raveller.unravel(theta_flat),
            result=result,
            num_steps=num_steps,
        )
        return value, aux

    def sample_theta(
        self, key: PRNGKeyArray, phi: PyTree[Array], theta_star: PyTree[Array]
    ) -> PyTree[Array]:
        """Draw `theta ~ N(theta_star, H⁻¹)`, the Laplace approximation to
        `p(theta | phi, y)`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `phi`: the hyperparameters of this draw.
        - `theta_star`: the mode at `phi` (e.g. `states.theta_star` of a chain).

        **Returns:**

        A PyTree like `theta_init`. Where `H` is not positive definite the draw is
        NaN, so a bad point is never mistaken for a sample.
        """
        raveller = self.raveller
        theta = raveller.ravel(theta_star)
        fn = self._negative_log_joint(theta, phi)
        factor = self.hessian.factorise(fn, theta, phi)
        draw = theta + self.hessian.sample(factor, key)
        draw = jnp.where(factor.positive_definite, draw, jnp.nan)
        return raveller.unravel(draw)

    def laplace_conditional(
        self, phi: PyTree[Array], theta_guess: PyTree[Array] | None = None
    ) -> LaplaceConditional:
        """The Laplace approximation at `phi`, with the Hessian strategy's own
        factor at the mode (the one `sample_theta` draws from)."""
        value, aux = self(phi, theta_guess)
        theta = self.raveller.ravel(aux.theta_star)
        fn = self._negative_log_joint(theta, phi)
        strategy = self.hessian
        factor = strategy.factorise(fn, theta, phi)
        result = RESULTS.where(
            factor.positive_definite, aux.result, RESULTS.hessian_not_positive_definite
        )
        return LaplaceConditional(
            value=value,
            result=result,
            theta_star=theta,
            log_joint=lambda t: -fn(t, phi),
            draw=lambda k: strategy.sample(factor, k),
            quadratic_form=lambda u: quadratic_form(factor, fn, theta, phi, u),
        )


def resolve_hessian(marginal: AbstractMarginal, phi: PyTree[ArrayLike]):
    """`marginal.with_hessian_for(phi)` for a `LaplaceMarginal`, any other marginal
    as it is: what the drivers call before compiling."""
    if isinstance(marginal, LaplaceMarginal):
        return marginal.with_hessian_for(phi)
    return marginal


LaplaceMarginal.__init__.__doc__ = """**Arguments:**

- `log_joint`: `log_joint(theta, phi) -> scalar`, the log joint density
    `log p(theta, phi, y)` up to a constant. `theta` (the latent) and `phi` (the
    hyperparameters) may be any PyTrees of arrays. Prefer a function defined once, or
    an `equinox.Module` holding the data, to a fresh lambda per call (a new function
    object means a new compilation).
- `theta_init`: a PyTree of floating arrays with the latent's structure; the cold
    start of the inner solver.
- `inner_solver`: an [`lapsample.AbstractInnerSolver`][]; default
    [`lapsample.Newton`][].
- `hessian`: an [`lapsample.AbstractHessianStrategy`][]; default
    [`lapsample.AutoHessian`][], which picks the cheapest of
    [`lapsample.DiagonalHessian`][], [`lapsample.BlockDiagonalHessian`][],
    [`lapsample.BandedHessian`][] and [`lapsample.DenseHessian`][] whose structure
    holds, once a concrete `phi` is at hand ([`lapsample.sample`][], `check`,
    `with_hessian_for`): see the class docstring.
- `hessian_reason`: set by `with_hessian_for` (why the strategy was chosen);
    leave it out.
- `predictor`: with [`lapsample.Newton`][], samplers also pass a predicted mode (a
    [`lapsample.WarmStart`][]) and Newton starts from the better of it and the
    previous mode by the log joint; `False` starts from the previous mode alone.
"""
