"""BlackJAX-compatible module paths: `lapsample.mcmc.laplace_marginal` mirrors
`blackjax.mcmc.laplace_marginal`, so ported code only changes `blackjax` to
`lapsample`."""

from . import laplace_marginal as laplace_marginal
