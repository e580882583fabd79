"""Mirror of `blackjax.mcmc.laplace_marginal`: re-exports
[`lapsample.laplace_marginal_factory`][] and [`lapsample.LaplaceMarginal`][]."""

from .._marginal import (
    laplace_marginal_factory as laplace_marginal_factory,
    LaplaceMarginal as LaplaceMarginal,
)
