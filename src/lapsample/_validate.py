"""Argument validation shared by every entry point: one copy of each check,
raised before anything compiles."""

import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree


def leaf_paths(tree):
    return [
        (jtu.keystr(path), leaf) for path, leaf in jtu.tree_flatten_with_path(tree)[0]
    ]


COMPLEX_MESSAGE = (
    "{name} is complex ({dtype}). lapsample works with real log densities of "
    "real variables: gradients, Newton steps and momenta of complex values are "
    "not defined here. Pass real floats: `x.real` if the imaginary part is zero, "
    "or split a complex quantity into two real ones (`x.real`, `x.imag`)."
)


def check_real_tree(tree, name: str) -> None:
    """A `TypeError` that names the leaf, for complex leaves of `tree`."""
    for path, leaf in leaf_paths(tree):
        dtype = jnp.result_type(leaf) if hasattr(leaf, "dtype") else None
        if dtype is None and isinstance(leaf, complex):
            dtype = jnp.result_type(complex)
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(COMPLEX_MESSAGE.format(name=f"`{name}{path}`", dtype=dtype))


def check_float_tree(tree, name: str, example: str):
    check_real_tree(tree, name)
    for path, leaf in leaf_paths(tree):
        if hasattr(leaf, "dtype"):
            dtype = leaf.dtype
        else:
            try:
                dtype = jnp.asarray(leaf).dtype
            except TypeError:
                raise TypeError(
                    f"`{name}{path}` is a {type(leaf).__name__}, not an array. "
                    f"`{name}` must be a PyTree of floating-point arrays, e.g. "
                    f"{example}."
                ) from None
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"`{name}{path}` has dtype {dtype}; it must be floating point, or "
                f"gradients and Newton steps are meaningless. Pass floats, e.g. "
                f"{example} or `x.astype(float)`."
            )


def nonfinite_report(tree, name: str) -> str:
    bad = []
    for path, leaf in leaf_paths(tree):
        arr = np.asarray(leaf)
        if not np.all(np.isfinite(arr)):
            where = np.argwhere(~np.isfinite(arr)).tolist() if arr.ndim else []
            bad.append(f"{name}{path}" + (f" at indices {where[:5]}" if where else ""))
    return ", ".join(bad)


def as_float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(COMPLEX_MESSAGE.format(name="An input", dtype=x.dtype))
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


LOW_PRECISION_MESSAGE = (
    "{name} is {dtype}. Laplace marginals need float64: the Hessians of latent "
    "models are often ill-conditioned (condition numbers of 1e6 to 1e9 are "
    "common), and with float32's ~7 significant digits the mode, the "
    "log-determinant and the implicit gradient can lose most of their digits. "
    "That shows up as failed inner solves, divergences, or draws that are wrong "
    "without any sign. Enable float64 with "
    '`jax.config.update("jax_enable_x64", True)` at the top of the script, before '
    "creating any array."
)


class LowPrecisionWarning(UserWarning):
    """Warns that a Laplace marginal was given arrays of less than 64 bits.

    lapsample shows it once per process for each input it concerns (`theta_init`,
    `phi`), and a blanket warnings-as-errors setting (`-W error`, pytest's
    `filterwarnings = error`) shows it without raising, so a test suite that uses
    float32 on purpose stays green. Filters that name the category are obeyed:

    ```python
    warnings.filterwarnings("ignore", category=lapsample.LowPrecisionWarning)  # off
    warnings.filterwarnings("error", category=lapsample.LowPrecisionWarning)  # raise
    ```
    """


_SHOWN: set[str] = set()


def _filter_action(message: str, module: str) -> tuple[str, bool]:
    """The action of the first warnings filter that matches a `LowPrecisionWarning`
    (as `warnings.warn` would pick it), and whether that filter names the category
    (rather than all warnings or all `UserWarning`s)."""
    for action, msg, category, mod, lineno in warnings.filters:
        if (
            issubclass(LowPrecisionWarning, category)
            and (msg is None or msg.match(message))
            and (mod is None or mod.match(module))
        ):
            return action, issubclass(category, LowPrecisionWarning)
    return "default", False


def warn_if_low_precision(tree: PyTree, name: str, stacklevel: int = 3) -> None:
    """A [`lapsample.LowPrecisionWarning`][] when a floating leaf of `tree` has fewer
    than 64 bits: once per process and `name`, never raised by a blanket `error`
    filter, and as Python's filters say when they name the category."""
    for leaf in jtu.tree_leaves(tree):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).bits < 64:
            break
    else:
        return
    message = LOW_PRECISION_MESSAGE.format(name=name, dtype=dtype)
    action, named = _filter_action(message, "lapsample")
    if action == "ignore":
        return
    if named and action == "error":
        raise LowPrecisionWarning(message)
    if action != "always" and name in _SHOWN:
        return
    _SHOWN.add(name)
    with warnings.catch_warnings():
        # Shown, not raised: float32 on purpose must not fail a `-W error` suite.
        warnings.simplefilter("always", LowPrecisionWarning)
        warnings.warn(message, LowPrecisionWarning, stacklevel=stacklevel + 1)


# --------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a Python int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return value


def check_key(key) -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(
            "`key` must be a JAX PRNG key such as `jax.random.key(0)`, got "
            f"{type(key).__name__}."
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`key` must be a single key, got shape {key.shape}.")
        return key
    if key.shape == (2,) and key.dtype == jnp.uint32:
        return jr.wrap_key_data(key)
    raise ValueError(
        "`key` must be a single JAX PRNG key (`jax.random.key(seed)`); got an array "
        f"of shape {key.shape} and dtype {key.dtype}."
    )


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_tolerance(name: str, value) -> float | None:
    """A solver tolerance: `None` (the dtype's default) or a finite number in
    `[0, 1)`.

    Every lapsample tolerance is relative (`rtol`, `xtol`: a fraction of the
    objective or of `1 + max|theta|`) or an absolute tolerance on a log density
    (`atol`, in nats) or Optimistix's Cauchy test, so a value of 1 or more
    accepts a solve that has not started (`Newton(xtol=10)` stops after 0 steps),
    and a negative or non-finite one can never be met or always is.
    """
    if value is None or _is_traced(value):
        return value
    if isinstance(value, bool) or not isinstance(
        value, int | float | np.integer | np.floating | np.ndarray | jax.Array
    ):
        raise TypeError(
            f"`{name}` must be a float in [0, 1) or None (the default), got {value!r}."
        )
    if np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")
    number = float(value)
    if not (np.isfinite(number) and 0.0 <= number < 1.0):
        raise ValueError(
            f"`{name}` must be finite and in [0, 1), got {value!r}: a tolerance of "
            "1 or more accepts a solve that has not converged, and a negative or "
            "non-finite one makes no sense. Leave it as None (the dtype's default, "
            "e.g. about 1e-11 in float64) or pass a small value such as 1e-8."
        )
    return number


def check_nonnegative(name: str, value, fix: str) -> float | None:
    """A finite, non-negative number (`None` passes); `fix` ends the message."""
    if value is None or _is_traced(value):
        return value
    if isinstance(value, bool) or not isinstance(
        value, int | float | np.integer | np.floating | np.ndarray | jax.Array
    ):
        raise TypeError(f"`{name}` must be a non-negative float, got {value!r}.")
    if np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")
    number = float(value)
    if not (np.isfinite(number) and number >= 0.0):
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}. {fix}")
    return number


def check_solver_settings(name: str, max_steps, **tolerances) -> None:
    """Tolerances in `[0, 1)` (or `None`) and `max_steps` an int >= 1, for every
    inner solver (and the latent-Gaussian Newton), before anything compiles."""
    for field, value in tolerances.items():
        check_tolerance(f"{name}({field}=...)", value)
    check_int(f"{name}(max_steps=...)", max_steps, 1)
