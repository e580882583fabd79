"""Mirror of `blackjax.mcmc.laplace_marginal`: re-exports
[`lapsample.laplace_marginal_factory`][] and [`lapsample.LaplaceMarginal`][]."""

from .._compat.samplers import laplace_marginal_factory as laplace_marginal_factory
from .._marginal.laplace import LaplaceMarginal as LaplaceMarginal
