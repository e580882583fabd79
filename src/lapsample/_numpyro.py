"""NumPyro models as input: pick the latent sites, get a Laplace marginal over the
rest.

NumPyro is optional (`pip install "lapsample[numpyro]"`); it is imported only when
[`lapsample.from_numpyro`][] is called.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, PRNGKeyArray, Scalar

from ._hessian.auto import AutoHessian
from ._hessian.base import AbstractHessianStrategy
from ._inner import AbstractInnerSolver, Newton
from ._marginal.laplace import LaplaceMarginal
from ._output.sample_results import SampleResults


def _import_numpyro(what: str):
    try:
        import numpyro
        import numpyro.infer.util  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"`{what}` needs NumPyro, which is not installed. Install it with "
            '`pip install "lapsample[numpyro]"`.'
        ) from e
    return numpyro


class NumPyroLogJoint(eqx.Module):
    """`log_joint(theta, phi)` of a NumPyro model over unconstrained values, built
    by [`lapsample.from_numpyro`][].

    `potential(params)` is NumPyro's potential energy (minus the log joint of the
    unconstrained values, with the log-Jacobians of the transforms from each
    site's support to the real line). The model's arguments, its data, are
    closed over by `potential` and `constrain_one`, not fields of this PyTree, so
    under `jit` they stay the concrete Python and NumPy values that were given,
    as in NumPyro's own MCMC: a model may compute with NumPy on them
    (`len(np.unique(dept))` in NumPyro's `examples/ucbadmit.py`). They are
    constants of the compiled code.

    `constrain_one(params, return_deterministic)` maps unconstrained values to
    the sites' supports, and `postprocess` does that for draws, so that a run on
    this log joint's marginal shows the model's sites (`tau`, not log tau), not
    only a run on the [`lapsample.NumPyroModel`][].
    """

    potential: Callable
    constrain_one: Callable
    theta_init: dict[str, Array]

    def __call__(self, theta: dict[str, Array], phi: dict[str, Array]) -> Scalar:
        return -self.potential({**phi, **theta})

    def postprocess(self, phi, theta=None) -> dict[str, np.ndarray]:
        """Draws with leading axes `(chains, draws)` as constrained site values,
        NumPy arrays."""
        return _as_numpy(
            constrain_draws(self.constrain_one, self.theta_init, phi, theta, 2)
        )


def constrain_draws(
    constrain_one: Callable,
    theta_init: dict[str, Array],
    phi: dict[str, Any],
    theta: dict[str, Any] | None,
    batch_ndims: int,
) -> dict[str, Array]:
    """`NumPyroModel.constrain` for the sites' map `constrain_one`."""
    if theta is None:
        # The latent's values only matter for supports that depend on it.
        batch = np.shape(next(iter(phi.values())))[:batch_ndims]
        theta = jax.tree_util.tree_map(
            lambda x: jnp.broadcast_to(x, batch + jnp.shape(x)), theta_init
        )
        keep = set(phi)
    else:
        keep = None

    def one(params):
        values = constrain_one(params, keep is None)
        return {
            name: value
            for name, value in values.items()
            if keep is None or name in keep
        }

    # Batched here: `constrain_fn(batch_ndims=)` is missing from older NumPyro.
    for _ in range(batch_ndims):
        one = jax.vmap(one)
    values = one({**phi, **theta})
    # `vmap` can hand an input that passes through unchanged (a real site) back
    # as it came, e.g. as a NumPy array.
    return {name: jnp.asarray(value) for name, value in values.items()}


def numpyro_postprocess(marginal) -> Callable | None:
    """The map of draws to the model's sites for a marginal built by
    [`lapsample.from_numpyro`][] (`None` for any other)."""
    if isinstance(marginal, LaplaceMarginal) and isinstance(
        marginal.log_joint, NumPyroLogJoint
    ):
        return marginal.log_joint.postprocess
    return None


def _closures(numpyro, model, potential_fn, model_args, model_kwargs):
    """`potential` and `constrain_one`, closing over the model's arguments."""

    def potential(params):
        return potential_fn(*model_args, **model_kwargs)(params)

    def constrain_one(params, return_deterministic):
        return numpyro.infer.util.constrain_fn(
            model,
            model_args,
            model_kwargs,
            params,
            return_deterministic=return_deterministic,
        )

    return potential, constrain_one


def _is_latent_sample(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _check_sites(model_trace, latent: tuple[str, ...]) -> None:
    """Clear errors, before any compilation, for latent names that are not
    continuous unobserved sample sites, and for models with discrete latent
    variables or `numpyro.param` sites."""
    for name in latent:
        site = model_trace.get(name)
        _check_masked_site(model_trace, name)
        if site is None or site["type"] not in ("sample", "deterministic", "param"):
            what = "no site" if site is None else f"a {site['type']} site"
            raise ValueError(
                f"`latent` names {name!r}, but the model has {what} of that name. "
                "`latent` must name unobserved `numpyro.sample` sites; the model's "
                f"unobserved sample sites are: "
                f"{_sample_site_names(model_trace)}."
            )
        if site["type"] == "deterministic":
            raise ValueError(
                f"`latent` names {name!r}, a `numpyro.deterministic` site: it is a "
                "function of other sites, not a variable to integrate out. Name the "
                "sample sites it is computed from instead (unobserved sample sites: "
                f"{_sample_site_names(model_trace)})."
            )
        if site["type"] == "sample" and site["is_observed"]:
            raise ValueError(
                f"`latent` names {name!r}, an observed site (it has `obs=`): only "
                "unobserved sites can be integrated out. Unobserved sample sites: "
                f"{_sample_site_names(model_trace)}."
            )
    for name, site in model_trace.items():
        if site["type"] == "plate" and _is_subsampled(site):
            size, subsample_size = site["args"][:2]
            raise ValueError(
                f"The plate {name!r} has `subsample_size={subsample_size}` (of "
                f"{size}). lapsample needs the full-data log joint: the Laplace "
                "approximation and HMC's accept step are exact computations, and "
                "a subsampled log joint gives a different, wrong posterior. Remove "
                "`subsample_size` (every observation then enters the log joint)."
            )
        if site["type"] == "param":
            raise ValueError(
                f"The model has a `numpyro.param` site {name!r}. lapsample samples "
                "and integrates over `numpyro.sample` sites only: give it a prior "
                "with `numpyro.sample`, or pass its value to the model as data."
            )
        if _is_latent_sample(site) and site["fn"].support.is_discrete:
            role = "latent site" if name in latent else "sample site"
            raise ValueError(
                f"The {role} {name!r} is discrete ({type(site['fn']).__name__}, "
                f"support {site['fn'].support}). lapsample integrates out the "
                "latent sites with a Laplace approximation and samples the others "
                "with HMC, so every unobserved site must be continuous. Sum the "
                "discrete variable out in the model (e.g. with "
                "`dist.MixtureSameFamily`), or observe it with `obs=`."
            )
    if all(name in latent for name, s in model_trace.items() if _is_latent_sample(s)):
        raise ValueError(
            f"Every unobserved sample site of the model is in `latent` ({latent}), "
            "which leaves no hyperparameters `phi` for HMC to sample. Keep at least "
            "one site out of `latent`."
        )


def _is_subsampled(site) -> bool:
    args = site.get("args") or ()
    return len(args) >= 2 and args[1] is not None and args[1] != args[0]


def _check_masked_site(model_trace, name: str) -> None:
    """A clear error for a name in `latent` that belongs to a site with
    `obs_mask=`: NumPyro splits `numpyro.sample(x, ..., obs=y, obs_mask=mask)`
    into `x_observed` (the observed entries), `x_unobserved` (a latent over
    every entry, whose density counts only where `mask` is False) and the
    deterministic `x` that combines them."""
    base = name.removesuffix("_unobserved").removesuffix("_observed")
    combined = model_trace.get(base)
    if combined is None or combined["type"] != "deterministic":
        return
    if not all(
        f"{base}{suffix}" in model_trace for suffix in ("_observed", "_unobserved")
    ):
        return
    raise ValueError(
        f"`latent` names {name!r}, part of the site {base!r} with `obs_mask=`. "
        f"NumPyro splits it into {base + '_observed'!r} (the observed entries), "
        f"{base + '_unobserved'!r} (an unobserved site with one entry per "
        "observation, whose density counts only where the mask is False: the "
        "entries at observed positions have no density at all, so a Laplace "
        f"approximation of them is singular) and the deterministic {base!r}. "
        "Impute the missing values with a site of "
        "their own instead: `y_missing = numpyro.sample('y_missing', "
        "dist.Normal(...).expand([n_missing]))`, then "
        "`y = y_obs.at[missing_index].set(y_missing)`, and name 'y_missing' in "
        "`latent`."
    )


def _sample_site_names(model_trace) -> str:
    names = [n for n, s in model_trace.items() if _is_latent_sample(s)]
    return ", ".join(repr(n) for n in names) if names else "none"


def _as_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


class NumPyroModel(eqx.Module):
    """A NumPyro model split into a latent `theta` (integrated out) and
    hyperparameters `phi` (sampled), built by [`lapsample.from_numpyro`][].

    Both are dicts keyed by site name, holding **unconstrained** values: a site
    with a constrained support (a scale, a probability, a simplex) is sampled or
    integrated over after NumPyro's transform to the real line, whose
    log-Jacobian is part of the log joint.

    ```python
    model = lapsample.from_numpyro(eight_schools, J, sigma, y=y, latent=("theta",))
    results = lapsample.sample(jax.random.key(0), model, sample_theta=True)
    idata = results.to_arviz()    # mu, tau (> 0), theta: constrained, site shapes
    draws = model.constrain(results)  # the same, as a dict of arrays
    ```

    - `marginal`: the [`lapsample.LaplaceMarginal`][] over `phi`; its `log_joint`
      is NumPyro's log density of the unconstrained values, Jacobians included.
    - `phi_init`: the model's initialisation of the `phi` sites (unconstrained), a
      starting point for [`lapsample.sample`][].
    - `latent`: the names of the latent sites.
    - `model`, `model_args`, `model_kwargs`: the NumPyro model and the arguments
      it was traced with.

    What shows the draws shows the sites, constrained: `results.to_arviz()`,
    `results.summary()` and `results.print_summary()` give `tau`, not its
    logarithm, whether the run was given the model, `model.marginal` or a
    [`lapsample.Sampler`][] built on it. Only `results.phi` and `results.theta`
    hold the unconstrained values the sampler worked with (`results.phi["tau"]`
    is log tau); `model.constrain(results)` maps them to the sites.
    """

    marginal: LaplaceMarginal
    phi_init: dict[str, Array]
    latent: tuple[str, ...] = eqx.field(static=True)
    model: Callable
    model_args: tuple
    model_kwargs: dict[str, Any]

    @property
    def theta_init(self) -> dict[str, Array]:
        """The model's initialisation of the latent sites (unconstrained)."""
        return self.marginal.theta_init

    def constrain(
        self,
        phi: dict[str, Any] | SampleResults,
        theta: dict[str, Any] | None = None,
        *,
        batch_ndims: int = 0,
    ) -> dict[str, Array]:
        """Map unconstrained values of `phi` (and `theta`) to each site's support.

        `model.constrain(results)` maps the draws of a run
        (`constrain(results.phi, results.theta, batch_ndims=2)`).

        **Arguments:**

        - `phi`: unconstrained values of the `phi` sites (e.g. `results.phi`), or
          a [`lapsample.SampleResults`][] (then `theta` and `batch_ndims` are
          taken from it).
        - `theta`: unconstrained values of the latent sites (e.g.
          `results.theta`), or `None`.
        - `batch_ndims`: the number of leading batch axes of every value (2 for
          `(chains, draws)`).

        **Returns:**

        A dict keyed by site name. With `theta`: every sample site and every
        `numpyro.deterministic` site. Without it: the `phi` sites only (the
        latent, and so the deterministic sites, are not known).
        """
        if isinstance(phi, SampleResults):
            return self.constrain(phi.phi, phi.theta, batch_ndims=2)
        _import_numpyro("NumPyroModel.constrain")
        log_joint = self.marginal.log_joint
        return constrain_draws(
            log_joint.constrain_one, self.theta_init, phi, theta, batch_ndims
        )

    def constrain_results(self, results: SampleResults) -> dict[str, np.ndarray]:
        """The draws of a run of [`lapsample.sample`][] in the constrained space,
        keyed by site name, each of shape `(chains, draws, *site_shape)`.

        With `sample_theta=True`: every sample site and every deterministic site.
        Without: the `phi` sites only.

        **Arguments:**

        - `results`: a [`lapsample.SampleResults`][] of `self.marginal`.

        **Returns:**

        A dict of NumPy arrays.
        """
        return _as_numpy(self.constrain(results.phi, results.theta, batch_ndims=2))

    def postprocess(self, phi, theta=None) -> dict[str, np.ndarray]:
        """Draws with leading axes `(chains, draws)` as constrained site values
        (`constrain(phi, theta, batch_ndims=2)` as NumPy arrays). `lapsample.sample`
        puts this in [`lapsample.SampleResults`][]`.postprocess`, so that
        `results.to_arviz()` and `results.summary()` show the sites."""
        return _as_numpy(self.constrain(phi, theta, batch_ndims=2))

    def pointwise_log_likelihood(self, phi, theta) -> dict[str, np.ndarray]:
        """`log p(y_i | theta, phi)` of every observed site at draws with leading
        axes `(chains, draws)` (NumPyro's `numpyro.infer.util.log_likelihood` on
        the constrained draws), keyed by site name: the `log_likelihood` group of
        `results.to_arviz()`."""
        numpyro = _import_numpyro("NumPyroModel.pointwise_log_likelihood")
        samples = self.constrain(phi, theta, batch_ndims=2)
        samples = {k: v for k, v in samples.items() if k in set(phi) | set(theta)}
        values = numpyro.infer.util.log_likelihood(
            self.model, samples, *self.model_args, batch_ndims=2, **self.model_kwargs
        )
        return _as_numpy(values)

    def to_arviz(self, results: SampleResults):
        """`results` as an `arviz.InferenceData`, with the constrained values under
        the site names: `tau`, not its logarithm; `theta` with the site's shape.

        The same as `results.to_arviz()`, which shows the sites already for a run
        on the model, on `self.marginal` or on a [`lapsample.Sampler`][] built on
        it; kept for results made otherwise (e.g. assembled by hand).

        **Arguments:**

        - `results`: a [`lapsample.SampleResults`][] of `self.marginal`.

        **Returns:**

        An `arviz.InferenceData`.
        """
        named = eqx.tree_at(
            lambda r: (r.postprocess, r.pointwise_log_likelihood),
            results,
            (self.postprocess, self.pointwise_log_likelihood),
            is_leaf=lambda x: x is None,
        )
        return named.to_arviz()

    def predictive(
        self,
        key: PRNGKeyArray,
        results: SampleResults,
        *model_args,
        return_sites: Sequence[str] | None = None,
        **model_kwargs,
    ) -> dict[str, np.ndarray]:
        """Posterior predictive draws: every draw of `phi` and `theta` is fed to
        `numpyro.infer.Predictive`, which runs the model forward from it.

        ```python
        results = lapsample.sample(key, model.marginal, model.phi_init,
                                   sample_theta=True)
        y_rep = model.predictive(key, results, J, sigma)["obs"]  # y=None: simulate
        ```

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `results`: a [`lapsample.SampleResults`][] of `self.marginal`, run with
          `sample_theta=True`.
        - `*model_args`, `**model_kwargs`: the model's arguments for the
          predictions (e.g. new covariates, `y=None`). With none, those given to
          [`lapsample.from_numpyro`][] are used (observed sites keep their data).
        - `return_sites`: the sites to return; default NumPyro's (the observed
          and deterministic sites).

        **Returns:**

        A dict keyed by site name of arrays `(chains, draws, *site_shape)`.
        """
        if results.theta is None:
            raise ValueError(
                "`predictive` needs draws of the latent sites: run "
                "`lapsample.sample(..., sample_theta=True)`."
            )
        if not model_args and not model_kwargs:
            model_args, model_kwargs = self.model_args, self.model_kwargs
        return self._predict(
            key, results.phi, results.theta, model_args, model_kwargs, return_sites
        )

    def _predict(self, key, phi, theta, model_args, model_kwargs, return_sites):
        """`numpyro.infer.Predictive` on unconstrained draws `(chains, draws, ...)`."""
        numpyro = _import_numpyro("NumPyroModel.predictive")
        samples = self.constrain(phi, theta, batch_ndims=2)
        names = set(phi) | set(theta)
        samples = {name: value for name, value in samples.items() if name in names}
        predictive = numpyro.infer.Predictive(
            self.model,
            posterior_samples=samples,
            return_sites=None if return_sites is None else list(return_sites),
            batch_ndims=2,
        )
        return _as_numpy(predictive(key, *model_args, **model_kwargs))


NumPyroModel.__init__.__doc__ = """Built by [`lapsample.from_numpyro`][], which is the
way to make one.

**Arguments:**

- `marginal`: the [`lapsample.LaplaceMarginal`][] over the `phi` sites.
- `phi_init`: unconstrained starting values of the `phi` sites.
- `latent`: the names of the latent sites.
- `model`, `model_args`, `model_kwargs`: the NumPyro model and its arguments.
"""


def from_numpyro(
    model: Callable,
    *model_args: Any,
    latent: Sequence[str] | str = ("theta",),
    key: PRNGKeyArray | None = None,
    init_strategy: Callable | None = None,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **model_kwargs: Any,
) -> NumPyroModel:
    """A Laplace marginal from a NumPyro model: the sites named in `latent` are
    integrated out, the other unobserved sample sites are `phi`.

    ```python
    def eight_schools(J, sigma, y=None):
        mu = numpyro.sample("mu", dist.Normal(0, 5))
        tau = numpyro.sample("tau", dist.HalfCauchy(5))
        with numpyro.plate("J", J):
            theta = numpyro.sample("theta", dist.Normal(mu, tau))
            numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    model = lapsample.from_numpyro(eight_schools, 8, sigma, y=y, latent=("theta",))
    results = lapsample.sample(jax.random.key(0), model, sample_theta=True)
    results.to_arviz()               # mu, tau (> 0), theta (8 values)
    ```

    The model is traced with NumPyro's own utilities
    (`numpyro.infer.util.initialize_model` and `potential_energy`): `log_joint(theta,
    phi)` is NumPyro's log density with every unobserved site mapped to the real
    line by the transform of its support, log-Jacobians included. So `theta` and
    `phi` are dicts of unconstrained values keyed by site name (`results.phi["tau"]`
    is log tau); what shows the draws (`results.to_arviz()`, `results.summary()`)
    maps them back to the sites, and so does `model.constrain(results)`.

    A latent site with a constrained support (e.g. a positive rate) is integrated
    out on its unconstrained scale; the Laplace approximation is then one of the
    transformed variable, and is exact only if that is Gaussian given `phi`.

    **Arguments:**

    - `model`: a NumPyro model (a function with `numpyro.sample` sites).
    - `*model_args`, `**model_kwargs`: the model's arguments, data included. As
      in NumPyro's own MCMC, they stay the concrete values given (closed over,
      not traced), so the model may use NumPy on them (`np.unique(dept)`); they
      are constants of the compiled code.
    - `latent`: the names of the sample sites to integrate out (`theta`). Every one
      must be an unobserved, continuous sample site; at least one other unobserved
      site must remain for `phi`.
    - `key`: a JAX PRNG key for the initialisation (default `jax.random.key(0)`).
    - `init_strategy`: a NumPyro initialisation strategy (default
      `numpyro.infer.init_to_uniform`, as NumPyro's NUTS); it gives `phi_init` and
      the inner solver's cold start `theta_init`.
    - `inner_solver`, `hessian`: as for [`lapsample.LaplaceMarginal`][]; the
      default strategy picks itself here, at `phi_init` (see
      [`lapsample.AutoHessian`][]).

    These keyword names are taken by `from_numpyro`, not passed to the model.

    **Returns:**

    A [`lapsample.NumPyroModel`][]: `.marginal` (a [`lapsample.LaplaceMarginal`][]),
    `.phi_init`, and the maps back to the model's sites.

    **Raises:**

    `ImportError` without NumPyro; `ValueError` when a name in `latent` is not an
    unobserved sample site of the model (missing, observed, deterministic, part of
    a site with `obs_mask=`), when the model has a discrete unobserved site, a
    `numpyro.param` site or a plate with `subsample_size`, or when `latent` leaves
    nothing for `phi`.
    """
    numpyro = _import_numpyro("lapsample.from_numpyro")
    from numpyro import handlers

    if isinstance(latent, str):
        latent = (latent,)
    if not isinstance(latent, Sequence) or not all(isinstance(n, str) for n in latent):
        raise TypeError(
            "`latent` must be a tuple of site names, e.g. `latent=('theta',)`; got "
            f"{latent!r}."
        )
    latent = tuple(latent)
    if len(latent) == 0:
        raise ValueError(
            "`latent` is empty: name at least one sample site to integrate out, e.g. "
            "`latent=('theta',)`."
        )
    if len(set(latent)) != len(latent):
        raise ValueError(f"`latent` names a site twice: {latent}.")
    if key is None:
        key = jr.key(0)
    if init_strategy is None:
        init_strategy = numpyro.infer.init_to_uniform
    if inner_solver is None:
        inner_solver = Newton()
    if hessian is None:
        hessian = AutoHessian()

    model_trace = handlers.trace(handlers.seed(model, key)).get_trace(
        *model_args, **model_kwargs
    )
    _check_sites(model_trace, latent)
    info = numpyro.infer.util.initialize_model(
        key,
        model,
        init_strategy=init_strategy,
        dynamic_args=True,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    z = info.param_info.z
    theta_init = {name: z[name] for name in latent}
    phi_init = {name: value for name, value in z.items() if name not in latent}
    potential, constrain_one = _closures(
        numpyro, model, info.potential_fn, model_args, dict(model_kwargs)
    )
    log_joint = NumPyroLogJoint(potential, constrain_one, theta_init)
    # With the default strategy, the Hessian's structure is read here, once, at
    # `phi_init` (`LaplaceMarginal.with_hessian_for`), before anything compiles.
    marginal = LaplaceMarginal(
        log_joint, theta_init, inner_solver, hessian
    ).with_hessian_for(phi_init)
    return NumPyroModel(
        marginal=marginal,
        phi_init=phi_init,
        latent=latent,
        model=model,
        model_args=model_args,
        model_kwargs=dict(model_kwargs),
    )
