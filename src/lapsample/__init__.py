"""lapsample: Laplace-marginal Hamiltonian Monte Carlo on JAX."""

import importlib.metadata

from ._hessian import (
    AbstractFactor as AbstractFactor,
    AbstractHessianStrategy as AbstractHessianStrategy,
    CholeskyFactor as CholeskyFactor,
    DenseHessian as DenseHessian,
    DiagonalFactor as DiagonalFactor,
    DiagonalHessian as DiagonalHessian,
    LineaxFactor as LineaxFactor,
    LineaxHessian as LineaxHessian,
)
from ._inner import (
    AbstractInnerSolver as AbstractInnerSolver,
    BFGS as BFGS,
    InnerSolution as InnerSolution,
    LBFGS as LBFGS,
    Newton as Newton,
)
from ._marginal import (
    AbstractMarginal as AbstractMarginal,
    LaplaceMarginal as LaplaceMarginal,
    laplace_marginal_factory as laplace_marginal_factory,
    MarginalAux as MarginalAux,
    PlainDensity as PlainDensity,
)
from ._results import RESULTS as RESULTS


__version__ = importlib.metadata.version("lapsample")
