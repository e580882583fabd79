"""BlackJAX-compatible module paths: `lapsample.mcmc.laplace_marginal`,
`laplace_hmc`, `laplace_dynamic_hmc` and `hmc` mirror `blackjax.mcmc.*`, so ported
code only changes `blackjax` to `lapsample`."""

from . import (
    hmc as hmc,
    laplace_dynamic_hmc as laplace_dynamic_hmc,
    laplace_hmc as laplace_hmc,
    laplace_marginal as laplace_marginal,
)
