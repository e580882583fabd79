"""lapsample: Laplace-marginal Hamiltonian Monte Carlo on JAX."""

import importlib.metadata

from ._api import (
    ess as ess,
    laplace_dhmc as laplace_dhmc,
    laplace_dmhmc as laplace_dmhmc,
    laplace_hmc as laplace_hmc,
    laplace_mhmc as laplace_mhmc,
    laplace_nuts as laplace_nuts,
    run_inference_algorithm as run_inference_algorithm,
)
from ._check import (
    laplace_check as laplace_check,
    LaplaceCheckResults as LaplaceCheckResults,
)
from ._checkpoint import CheckpointError as CheckpointError
from ._detect import (
    detect_hessian as detect_hessian,
    HessianDetection as HessianDetection,
)
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
from ._integrator import (
    AbstractIntegrator as AbstractIntegrator,
    AbstractPalindromicIntegrator as AbstractPalindromicIntegrator,
    FlatLogDensity as FlatLogDensity,
    Leapfrog as Leapfrog,
    McLachlan as McLachlan,
    PhasePoint as PhasePoint,
)
from ._latent_gaussian import LatentGaussianMarginal as LatentGaussianMarginal
from ._likelihoods import (
    AbstractLikelihood as AbstractLikelihood,
    BernoulliLogit as BernoulliLogit,
    Gaussian as Gaussian,
    NegBinomial2Log as NegBinomial2Log,
    PoissonLog as PoissonLog,
)
from ._marginal import (
    AbstractMarginal as AbstractMarginal,
    laplace_marginal_factory as laplace_marginal_factory,
    LaplaceMarginal as LaplaceMarginal,
    MarginalAux as MarginalAux,
    PlainDensity as PlainDensity,
)
from ._metric import (
    AbstractMetric as AbstractMetric,
    DenseMetric as DenseMetric,
    DiagonalMetric as DiagonalMetric,
    metric_from_inverse_mass_matrix as metric_from_inverse_mass_matrix,
)
from ._numpyro import from_numpyro as from_numpyro, NumPyroModel as NumPyroModel
from ._proposal import (
    AbstractProposal as AbstractProposal,
    AbstractWeightedProposal as AbstractWeightedProposal,
    EndpointMH as EndpointMH,
    Multinomial as Multinomial,
    ProposalState as ProposalState,
)
from ._results import RESULTS as RESULTS
from ._results_object import SampleResults as SampleResults
from ._run import resume as resume, sample as sample
from ._sampler import (
    Sampler as Sampler,
    SamplerInfo as SamplerInfo,
    SamplerState as SamplerState,
)
from ._structured import (
    BandedFactor as BandedFactor,
    BandedHessian as BandedHessian,
    BlockDiagonalHessian as BlockDiagonalHessian,
    BlockFactor as BlockFactor,
)
from ._trajectory import (
    AbstractDynamicTrajectory as AbstractDynamicTrajectory,
    AbstractNumStepsTrajectory as AbstractNumStepsTrajectory,
    AbstractTrajectory as AbstractTrajectory,
    Fixed as Fixed,
    Hamiltonian as Hamiltonian,
    IncompatibleComponentsError as IncompatibleComponentsError,
    NoUTurn as NoUTurn,
    RandomLength as RandomLength,
    TrajectoryInfo as TrajectoryInfo,
)


__version__ = importlib.metadata.version("lapsample")
