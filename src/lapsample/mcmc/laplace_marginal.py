"""Mirror of `blackjax.mcmc.laplace_marginal`: BlackJAX's `LaplaceMarginal` bundle of
functions, `laplace_marginal_factory` (also [`lapsample.laplace_marginal_factory`][]),
`LaplaceHMCInfo` and `laplace_lbfgs_grad_evals`, on lapsample's engine."""

from .._compat.marginal import (
    InnerDiagnostics as InnerDiagnostics,
    laplace_lbfgs_grad_evals as laplace_lbfgs_grad_evals,
    laplace_marginal_factory as laplace_marginal_factory,
    LaplaceMarginal as LaplaceMarginal,
)
from .._compat.types import LaplaceHMCInfo as LaplaceHMCInfo
