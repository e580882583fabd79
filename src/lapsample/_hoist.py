"""Loop-invariant work taken out of an iteration at the JAX level.

A Newton solve evaluates the model at every iterate, and much of that work may not
depend on the iterate at all: a Gaussian process's covariance `K(phi)`, its
Cholesky factor and `K⁻¹`; a Gaussian log joint's whole Hessian. XLA moves such work
out of a loop by itself when the solve is a program of its own, but not when the
solve runs inside another loop (a sampler's), where the GP's value+grad then
recomputes `K`'s factor at every Newton iterate. `hoist` does it before XLA sees the
program: it traces a function once, evaluates right away every operation whose
inputs do not depend on the varying arguments, and returns a function that replays
only the others.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp


class _Alias:
    """A replayed copy of values from one set of variables to another (the
    boundary of an inlined jitted call)."""

    def __init__(self, sources, targets):
        self.sources = sources
        self.targets = targets


class _Step:
    """One equation to replay, with the scope its variables live in."""

    def __init__(self, scope, eqn):
        self.scope = scope
        self.eqn = eqn


# Variables are keyed by (scope, variable): JAX reuses one traced jaxpr (and its
# variable objects) for every call of the same jitted function, so each inlined call
# gets a scope of its own.


def _read(env, scope, var):
    return var.val if isinstance(var, jex_core.Literal) else env[scope, var]


def _write(env, scope, variables, values):
    for var, value in zip(variables, values):
        if not isinstance(var, jex_core.DropVar):
            env[scope, var] = value


def _bind(eqn, env, scope):
    # As `jax.core.eval_jaxpr` binds an equation.
    params = eqn.primitive.get_bind_params(eqn.params)
    invals = [_read(env, scope, v) for v in eqn.invars]
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return out if eqn.primitive.multiple_results else [out]


def _is_inlined_call(eqn) -> bool:
    # A jitted call (`pjit`) is followed inside, so that the invariant part of its
    # body is evaluated once too; everything else (loops, conditionals, custom
    # derivative rules, effects) is one unit.
    inner = eqn.params.get("jaxpr")
    return (
        eqn.primitive.name in ("pjit", "jit", "closed_call")
        and isinstance(inner, jex_core.ClosedJaxpr)
        and not eqn.effects
    )


def _memo_key(eqn, env, scope):
    """A key under which an equation evaluated on the same input objects gives the
    same outputs (`None` where its parameters cannot be hashed)."""
    try:
        params = tuple(sorted(eqn.params.items()))
        hash(params)
    except TypeError:
        return None
    inputs = tuple(
        ("literal", repr(v.val))
        if isinstance(v, jex_core.Literal)
        else ("value", id(env[scope, v]))
        for v in eqn.invars
    )
    return eqn.primitive, params, inputs


def _any(varying) -> bool:
    # Linear in all of its inputs together (sums, copies, reshapes).
    del varying
    return True


def _one(varying) -> bool:
    # Bilinear: affine when at most one of its two inputs varies.
    return len(varying) <= 1


def _only(*positions):
    def rule(varying) -> bool:
        return all(i in positions for i in varying)

    return rule


def _not_first(varying) -> bool:
    # The first input (a predicate, an index) must not vary.
    return 0 not in varying


# For each primitive whose output is affine in some of its inputs, which inputs may
# vary. Anything else (a nonlinearity, a loop, a custom derivative rule) makes its
# outputs non-affine: the proof is conservative, never wrong.
_AFFINE_RULES = {
    **dict.fromkeys(
        (
            "add",
            "add_any",
            "sub",
            "neg",
            "reduce_sum",
            "cumsum",
            "reshape",
            "squeeze",
            "expand_dims",
            "broadcast_in_dim",
            "transpose",
            "rev",
            "slice",
            "concatenate",
            "pad",
            "copy",
            "copy_p",
            "convert_element_type",
        ),
        _any,
    ),
    "mul": _one,
    "dot_general": _one,
    "div": _only(0),
    "select_n": _not_first,
    "dynamic_slice": _only(0),
    "dynamic_update_slice": _only(0, 1),
    "gather": _only(0),
    "scatter-add": _only(0, 2),
    "scatter_add": _only(0, 2),
    "triangular_solve": _only(1),
}


class _Splitter:
    def __init__(self, memo: dict, evaluate: bool = True):
        # `evaluate=False`: only find which values vary (`reads_arguments`);
        # nothing is computed.
        self.evaluate = evaluate
        self.env: dict = {}
        self.varying: set = set()
        # Varying values not proved affine in the arguments.
        self.nonaffine: set = set()
        self.program: list = []
        self.scopes = 0
        # Shared by the `hoist` calls of one solve: the same invariant work (a
        # GP's K(phi) and its factor, traced once per function) is evaluated once.
        # XLA does not merge two LAPACK factorisations of the same matrix (they
        # write in place), so this is the only place they can be merged. Entries
        # keep their inputs alive, so that the `id`s in the keys stay unique.
        self.memo = memo

    def evaluate_now(self, eqn, scope):
        key = _memo_key(eqn, self.env, scope)
        if key is None or key not in self.memo:
            outputs = _bind(eqn, self.env, scope)
            if key is None:
                return outputs
            inputs = [_read(self.env, scope, v) for v in eqn.invars]
            self.memo[key] = (inputs, outputs)
        return self.memo[key][1]

    def is_varying(self, scope, var) -> bool:
        return not isinstance(var, jex_core.Literal) and (scope, var) in self.varying

    def split(self, jaxpr, scope) -> None:
        """Evaluate, into `env`, every equation of `jaxpr` none of whose inputs
        varies; append the others (in order) to `program`, their outputs varying."""
        for eqn in jaxpr.eqns:
            depends = [self.is_varying(scope, v) for v in eqn.invars]
            if not any(depends) and not eqn.effects:
                if self.evaluate:
                    outputs = self.evaluate_now(eqn, scope)
                    _write(self.env, scope, eqn.outvars, outputs)
            elif _is_inlined_call(eqn):
                self.inline(eqn, scope)
            else:
                self.program.append(_Step(scope, eqn))
                self.varying.update((scope, v) for v in eqn.outvars)
                varying = [i for i, d in enumerate(depends) if d]
                if not self.is_affine_step(eqn, scope, varying):
                    self.nonaffine.update((scope, v) for v in eqn.outvars)

    def is_affine_step(self, eqn, scope, varying) -> bool:
        """Whether a replayed equation's outputs are affine in the arguments,
        given which of its inputs (`varying`: their positions) are:
        `_AFFINE_RULES` names, per primitive, the inputs that may vary; all others
        must be invariant."""
        rule = _AFFINE_RULES.get(eqn.primitive.name)
        if rule is None:
            return False
        if any((scope, eqn.invars[i]) in self.nonaffine for i in varying):
            return False
        if not all(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars):
            return False
        return rule(varying)

    def cross(self, pairs) -> None:
        """Carry values across the boundary of an inlined call: each pair is
        `((scope, var), (scope, var))`, from one side to the other. Invariant
        values are copied now; varying ones by an `_Alias` in the replay."""
        sources, targets = [], []
        for (from_scope, source), (to_scope, target) in pairs:
            if isinstance(target, jex_core.DropVar):
                continue
            if self.is_varying(from_scope, source):
                sources.append((from_scope, source))
                targets.append((to_scope, target))
                if (from_scope, source) in self.nonaffine:
                    self.nonaffine.add((to_scope, target))
            elif self.evaluate:
                self.env[to_scope, target] = _read(self.env, from_scope, source)
        self.program.append(_Alias(sources, targets))
        self.varying.update(targets)

    def inline(self, eqn, scope) -> None:
        inner = eqn.params["jaxpr"]
        self.scopes += 1
        inner_scope = self.scopes
        _write(self.env, inner_scope, inner.jaxpr.constvars, inner.consts)
        self.cross(
            ((scope, outer), (inner_scope, var))
            for outer, var in zip(eqn.invars, inner.jaxpr.invars)
        )
        self.split(inner.jaxpr, inner_scope)
        self.cross(
            ((inner_scope, var), (scope, outer))
            for var, outer in zip(inner.jaxpr.outvars, eqn.outvars)
        )


def _split(fn, args, memo: dict, evaluate: bool = True):
    """Trace `fn(*args)` and split its equations (`_Splitter.split`), the
    arguments varying. Returns the jaxpr, the output shapes and the splitter."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    jaxpr = closed.jaxpr
    splitter = _Splitter(memo, evaluate)
    _write(splitter.env, 0, jaxpr.constvars, closed.consts)
    splitter.varying.update((0, v) for v in jaxpr.invars)
    splitter.split(jaxpr, 0)
    return jaxpr, out_shape, splitter


def hoist(fn: Callable, *args: Any, memo: dict | None = None) -> "Replay":
    """`fn` with its work that does not depend on its arguments done once, now.

    `fn(*args)` is traced at `args` (arrays, or any PyTree of them); the returned
    function takes arguments of the same structure, shapes and dtypes and gives the
    same outputs as `fn`, replaying only the operations that depend on the
    arguments. Everything else (whatever `fn` computes from values it closes over)
    is evaluated by this call, in the surrounding trace: called inside a
    `lax.while_loop` body, the returned function no longer recomputes it.

    The returned function must not be differentiated with respect to what `fn`
    closes over: the hoisted values are constants to it. Calls that pass the same
    `memo` (a dict) evaluate an invariant operation on the same inputs once. The
    returned `Replay` also says which outputs are invariant, and which are
    proved affine in the arguments.
    """
    jaxpr, out_shape, splitter = _split(fn, args, {} if memo is None else memo)
    out_tree = jax.tree.structure(out_shape)
    invariant = [not splitter.is_varying(0, v) for v in jaxpr.outvars]
    affine = [
        not (splitter.is_varying(0, v) and (0, v) in splitter.nonaffine)
        for v in jaxpr.outvars
    ]
    return Replay(
        jaxpr,
        splitter.env,
        splitter.program,
        jax.tree.structure(args),
        out_tree,
        jax.tree.unflatten(out_tree, invariant),
        jax.tree.unflatten(out_tree, affine),
    )


def reads_arguments(fn: Callable, *args: Any) -> bool:
    """Whether any output of `fn(*args)` is computed from `args`, judged from the
    operations `fn` traces to (followed into jitted calls), without evaluating
    anything. `False` means the outputs are the same for every value of `args`,
    and their derivatives in `args` are exactly zero: what automatic
    differentiation would compute from the same trace."""
    jaxpr, _, splitter = _split(fn, args, {}, evaluate=False)
    return any(splitter.is_varying(0, v) for v in jaxpr.outvars)


class Replay:
    """What `hoist` returns: call it as the function it was built from.

    - `invariant`: a PyTree of bools, one per output leaf: whether that output
      does not depend on the arguments at all (it was computed by `hoist`).
    - `affine`: likewise, whether that output is proved an affine function of the
      arguments, from the operations that compute it. The proof is conservative:
      `False` may still be affine.
    """

    def __init__(self, jaxpr, env, program, in_tree, out_tree, invariant, affine):
        self._jaxpr = jaxpr
        self._env = env
        self._program = program
        self._in_tree = in_tree
        self._out_tree = out_tree
        self.invariant = invariant
        self.affine = affine

    def __call__(self, *new_args):
        if jax.tree.structure(new_args) != self._in_tree:
            raise TypeError("hoist: the arguments' structure changed")
        local = dict(self._env)
        _write(local, 0, self._jaxpr.invars, jax.tree.leaves(new_args))
        for step in self._program:
            if isinstance(step, _Alias):
                for source, target in zip(step.sources, step.targets):
                    local[target] = local[source]
            else:
                outs = _bind(step.eqn, local, step.scope)
                _write(local, step.scope, step.eqn.outvars, outs)
        outs = [_read(local, 0, v) for v in self._jaxpr.outvars]
        return jax.tree.unflatten(self._out_tree, outs)
