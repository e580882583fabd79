"""Mirror of `blackjax.mcmc.laplace_dynamic_hmc`: `init(position, laplace,
random_generator_arg)`, `LaplaceDynamicHMCState`, `LaplaceHMCInfo` and
`as_top_level_api` (= [`lapsample.laplace_dhmc`][])."""

from .._compat.algorithm import init_dynamic_hmc as init
from .._compat.samplers import laplace_dhmc as as_top_level_api
from .._compat.types import (
    LaplaceDynamicHMCState as LaplaceDynamicHMCState,
    LaplaceHMCInfo as LaplaceHMCInfo,
)


__all__ = ["LaplaceDynamicHMCState", "LaplaceHMCInfo", "init", "as_top_level_api"]
