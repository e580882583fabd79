"""`lapsample._hoist.hoist`: the work of a function that does not depend on its
arguments is done once, and the replay gives the same numbers as the function."""

import re

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from lapsample._hoist import hoist, reads_arguments


X = jnp.linspace(0.0, 3.0, 6)
PHI = jnp.array([0.1, -0.2])


def _kernel(phi):
    sq = (X[:, None] - X[None, :]) ** 2
    return jnp.exp(2 * phi[0]) * jnp.exp(-sq / jnp.exp(2 * phi[1])) + 0.1 * jnp.eye(6)


def _poisson_gp(theta, phi):
    lower = jnp.linalg.cholesky(_kernel(phi))
    white = jsl.solve_triangular(lower, theta, lower=True)
    # A second call of the same jitted solve, with another varying right-hand side.
    other = jsl.solve_triangular(lower, 2.0 * theta, lower=True)
    return (
        -0.5 * white @ white
        - jnp.sum(jnp.log(jnp.diagonal(lower)))
        + jnp.sum(theta - jnp.exp(theta))
        + 0.01 * jnp.sum(other)
    )


def _gaussian_gp(theta, phi):
    lower = jnp.linalg.cholesky(_kernel(phi))
    white = jsl.solve_triangular(lower, theta, lower=True)
    return -0.5 * white @ white - 0.5 * jnp.sum((theta - 1.0) ** 2)


def _newton_pieces(log_joint, phi):
    def pieces(theta):
        value, grad = jax.value_and_grad(log_joint)(theta, phi)
        hessian = jax.jacfwd(jax.grad(log_joint))(theta, phi)
        return {"value": value, "grad": grad, "factor": jnp.linalg.cholesky(-hessian)}

    return pieces


def _count(text, primitive):
    # Applications of the primitive in the printed jaxpr ("x = cholesky y").
    return len(re.findall(rf"= {primitive}\b", text))


def test_replay_gives_the_same_numbers():
    theta0 = jnp.linspace(-1.0, 1.0, 6)
    pieces = _newton_pieces(_poisson_gp, PHI)
    replay = hoist(pieces, theta0)
    for theta in (theta0, theta0 + 0.3, -2.0 * theta0):
        expected, got = pieces(theta), replay(theta)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_theta_free_work_leaves_the_replay():
    # The GP's Cholesky of K(phi) and its K⁻¹ part of the Hessian are computed at
    # hoisting; the replay keeps only the Hessian's own factorisation. For a
    # log joint that is Gaussian in theta, the Hessian and its factor leave too.
    theta0 = jnp.linspace(-1.0, 1.0, 6)
    for log_joint, factorisations in ((_poisson_gp, 1), (_gaussian_gp, 0)):
        pieces = _newton_pieces(log_joint, PHI)
        original = str(jax.make_jaxpr(pieces)(theta0))
        replayed = str(jax.make_jaxpr(hoist(pieces, theta0))(theta0))
        assert _count(original, "cholesky") == 2
        assert _count(replayed, "cholesky") == factorisations
        assert _count(replayed, "triangular_solve") < _count(
            original, "triangular_solve"
        )


def test_repeated_jitted_call_with_different_hoisted_inputs():
    # Two calls of one jitted function (JAX traces it once: the same variables)
    # with different closed-over inputs, both hoisted: each keeps its own value.
    a1 = _kernel(PHI)
    a2 = _kernel(PHI + 0.5)

    def f(theta):
        return theta * jnp.linalg.cholesky(a1)[-1, -1] + jnp.linalg.cholesky(a2)[
            -1, -1
        ] * jnp.sum(theta)

    theta0 = jnp.arange(3.0)
    np.testing.assert_array_equal(hoist(f, theta0)(theta0 + 1), f(theta0 + 1))


def test_replay_inside_a_loop_and_under_jit():
    theta0 = jnp.linspace(-1.0, 1.0, 6)

    @jax.jit(static_argnums=1)
    def run(phi, use_hoist):
        pieces = _newton_pieces(_poisson_gp, phi)
        evaluate = hoist(pieces, theta0) if use_hoist else pieces

        def body(carry):
            theta, k, acc = carry
            out = evaluate(theta)
            return theta + 0.01, k + 1, acc + out["value"] + out["factor"][-1, -1]

        return jax.lax.while_loop(lambda c: c[1] < 3, body, (theta0, 0, 0.0))[2]

    np.testing.assert_array_equal(run(PHI, True), run(PHI, False))


def test_pytree_arguments_and_outputs():
    def f(args):
        theta, scale = args
        return {"a": theta * jnp.exp(PHI[0]) * scale, "b": (jnp.sum(theta), PHI)}

    args = (jnp.arange(3.0), jnp.array(2.0))
    got, expected = hoist(f, args)(args), f(args)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(g, e)


def _gradient_and_hessian(log_joint):
    return lambda theta: (
        jax.grad(log_joint)(theta, PHI),
        jax.hessian(log_joint)(theta, PHI),
    )


def test_affine_outputs_are_proved_from_the_operations():
    theta0 = jnp.linspace(-1.0, 1.0, 6)

    def kinked(theta, phi):
        # Its Hessian by AD is constant (the derivative of `abs` is a sign, whose
        # own derivative is a symbolic zero), but the log joint is not quadratic.
        return -0.5 * jnp.exp(phi[0]) * theta @ theta - 0.5 * jnp.sum(
            jnp.abs(theta - 2.0)
        )

    def product(theta, phi):
        # theta·theta² in the gradient: two varying operands of one product.
        return jnp.sum(theta * theta * theta) * phi[0]

    # (model, gradient proved affine, Hessian invariant)
    cases = [
        (_gaussian_gp, True, True),  # solves with K's factor: linear in theta
        (_poisson_gp, False, False),
        (kinked, False, True),
        (product, False, False),
    ]
    for model, affine, invariant in cases:
        replay = hoist(_gradient_and_hessian(model), theta0)
        assert replay.affine[0] is affine, model.__name__
        assert replay.invariant[1] is invariant, model.__name__
        if invariant:  # an invariant output is affine too (a constant)
            assert replay.affine[1] is True
        assert replay.invariant[0] is False


def test_a_solve_with_a_varying_matrix_is_not_affine():
    lower = jnp.linalg.cholesky(_kernel(PHI))

    def solve_with(theta):
        varying = lower + jnp.diag(theta)
        return (
            jsl.solve_triangular(lower, theta, lower=True),
            jsl.solve_triangular(varying, jnp.ones(6), lower=True),
        )

    replay = hoist(solve_with, jnp.ones(6))
    assert replay.affine == (True, False)


def test_reads_arguments_agrees_with_hoist_and_evaluates_nothing():
    # Whether a function's outputs depend on its arguments at all, without
    # computing anything: the Hessians of the models above, from inside a trace
    # (where `hoist` would add the invariant work to the outer program,
    # `reads_arguments` adds nothing).
    theta0 = jnp.linspace(-1.0, 1.0, 6)
    for model, reads in [(_gaussian_gp, False), (_poisson_gp, True)]:

        def hessian(theta, model=model):
            return jax.hessian(model)(theta, PHI)

        assert reads_arguments(hessian, theta0) is reads, model.__name__
        assert hoist(hessian, theta0).invariant is not reads

        def outer(theta, hessian=hessian):
            assert reads_arguments(hessian, theta) is reads
            return theta

        assert len(jax.make_jaxpr(outer)(theta0).eqns) == 0
    # An output that ignores the argument beside one that reads it: reads.
    assert reads_arguments(lambda t: (jnp.ones(3), t[:3]), theta0) is True
    assert reads_arguments(lambda t: (jnp.ones(3), 2.0 * jnp.ones(2)), theta0) is False
