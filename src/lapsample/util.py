"""Mirror of `blackjax.util`: re-exports [`lapsample.run_inference_algorithm`][]."""

from ._compat.util import run_inference_algorithm as run_inference_algorithm
