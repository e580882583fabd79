"""Mirror of the proposal builders of `blackjax.mcmc.hmc`, for
`build_proposal=`: `hmc_proposal` ([`lapsample.EndpointMH`][]) and
`multinomial_hmc_proposal` ([`lapsample.Multinomial`][])."""

from .._compat.types import (
    hmc_proposal as hmc_proposal,
    multinomial_hmc_proposal as multinomial_hmc_proposal,
)
