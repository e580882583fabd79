"""Mirror of `blackjax.mcmc.laplace_hmc`: `init(position, laplace)`,
`LaplaceHMCState`, `LaplaceHMCInfo` and `as_top_level_api` (=
[`lapsample.laplace_hmc`][])."""

from .._compat.algorithm import init_hmc as init
from .._compat.samplers import laplace_hmc as as_top_level_api
from .._compat.types import (
    LaplaceHMCInfo as LaplaceHMCInfo,
    LaplaceHMCState as LaplaceHMCState,
)


__all__ = ["LaplaceHMCState", "LaplaceHMCInfo", "init", "as_top_level_api"]
