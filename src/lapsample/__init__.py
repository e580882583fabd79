"""lapsample: Laplace-marginal Hamiltonian Monte Carlo on JAX."""

import importlib.metadata

from ._compat.adaptation import (
    nuts as nuts,
    window_adaptation as window_adaptation,
)
from ._compat.marginal import laplace_marginal_factory as laplace_marginal_factory
from ._compat.samplers import (
    laplace_dhmc as laplace_dhmc,
    laplace_dmhmc as laplace_dmhmc,
    laplace_hmc as laplace_hmc,
    laplace_mhmc as laplace_mhmc,
    laplace_nuts as laplace_nuts,
)
from ._compat.types import SamplingAlgorithm as SamplingAlgorithm
from ._compat.util import ess as ess, run_inference_algorithm as run_inference_algorithm
from ._factor import (
    AbstractFactor as AbstractFactor,
    AbstractStructuredFactor as AbstractStructuredFactor,
)
from ._hamiltonian import Hamiltonian as Hamiltonian
from ._hessian.auto import (
    AutoHessian as AutoHessian,
    LargeDenseHessianWarning as LargeDenseHessianWarning,
)
from ._hessian.banded import BandedHessian as BandedHessian
from ._hessian.base import (
    AbstractHessianStrategy as AbstractHessianStrategy,
    AbstractStructuredHessian as AbstractStructuredHessian,
)
from ._hessian.block import (
    BlockDiagonalHessian as BlockDiagonalHessian,
    BlockFactor as BlockFactor,
)
from ._hessian.dense import (
    CholeskyFactor as CholeskyFactor,
    DenseHessian as DenseHessian,
    LineaxFactor as LineaxFactor,
    LineaxHessian as LineaxHessian,
)
from ._hessian.detect import (
    detect_hessian as detect_hessian,
    HessianDetection as HessianDetection,
)
from ._hessian.diagonal import (
    DiagonalFactor as DiagonalFactor,
    DiagonalHessian as DiagonalHessian,
)
from ._inner import (
    AbstractInnerSolver as AbstractInnerSolver,
    InnerSolution as InnerSolution,
    Newton as Newton,
)
from ._integrator import (
    AbstractIntegrator as AbstractIntegrator,
    AbstractPalindromicIntegrator as AbstractPalindromicIntegrator,
    Leapfrog as Leapfrog,
    McLachlan as McLachlan,
)
from ._laplace_check import laplace_check as laplace_check
from ._linalg.banded import BandedFactor as BandedFactor
from ._marginal.base import (
    AbstractLaplaceMarginal as AbstractLaplaceMarginal,
    AbstractMarginal as AbstractMarginal,
    LaplaceConditional as LaplaceConditional,
    MarginalAux as MarginalAux,
    PlainDensity as PlainDensity,
)
from ._marginal.laplace import LaplaceMarginal as LaplaceMarginal
from ._marginal.latent_gaussian import LatentGaussianMarginal as LatentGaussianMarginal
from ._marginal.likelihoods import (
    AbstractLikelihood as AbstractLikelihood,
    BernoulliLogit as BernoulliLogit,
    Gaussian as Gaussian,
    NegBinomial2Log as NegBinomial2Log,
    PoissonLog as PoissonLog,
)
from ._metric import (
    AbstractMetric as AbstractMetric,
    DenseMetric as DenseMetric,
    DiagonalMetric as DiagonalMetric,
    metric_from_inverse_mass_matrix as metric_from_inverse_mass_matrix,
)
from ._misc import WarmStart as WarmStart
from ._numpyro import from_numpyro as from_numpyro, NumPyroModel as NumPyroModel
from ._nuts import NoUTurn as NoUTurn
from ._output.check_results import LaplaceCheckResults as LaplaceCheckResults
from ._output.predict import (
    predict_latent as predict_latent,
    predictive as predictive,
)
from ._output.sample_results import SampleResults as SampleResults
from ._phase_space import (
    FlatLogDensity as FlatLogDensity,
    PhasePoint as PhasePoint,
    Trail as Trail,
)
from ._proposal import (
    AbstractProposal as AbstractProposal,
    AbstractWeightedProposal as AbstractWeightedProposal,
    EndpointMH as EndpointMH,
    Multinomial as Multinomial,
    ProposalState as ProposalState,
)
from ._quasi_newton import BFGS as BFGS, LBFGS as LBFGS
from ._results import RESULTS as RESULTS
from ._sampler import (
    Sampler as Sampler,
    SamplerInfo as SamplerInfo,
    SamplerState as SamplerState,
)
from ._trajectory import (
    AbstractDynamicTrajectory as AbstractDynamicTrajectory,
    AbstractNumStepsTrajectory as AbstractNumStepsTrajectory,
    AbstractTrajectory as AbstractTrajectory,
    Fixed as Fixed,
    IncompatibleComponentsError as IncompatibleComponentsError,
    RandomLength as RandomLength,
    TrajectoryInfo as TrajectoryInfo,
)
from ._validate import LowPrecisionWarning as LowPrecisionWarning
from ._workflow.checkpoint import CheckpointError as CheckpointError
from ._workflow.driver import sample as sample
from ._workflow.resume import continue_run as continue_run, resume as resume


try:
    __version__ = importlib.metadata.version("lapsample")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    __version__ = "0+unknown"


def _public_module_names() -> None:
    """Public classes and functions say they live in `lapsample` (tracebacks, reprs
    and pickles name `lapsample.CheckpointError`, not the private module that
    defines it); `lapsample.<name>` resolves to the same object, so pickling is
    unaffected. A class's own methods and properties move with it, so that tools
    that inspect the package (the API docs) see one consistent home."""
    for name, obj in list(globals().items()):
        module = getattr(obj, "__module__", None)
        if (
            name.startswith("_")
            or not isinstance(module, str)
            or not module.startswith("lapsample.")
            or getattr(obj, "__name__", None) != name
        ):
            continue
        obj.__module__ = __name__
        for member in vars(obj).values() if isinstance(obj, type) else ():
            for fn in (member, *(getattr(member, a, None) for a in _ACCESSORS)):
                if getattr(fn, "__module__", None) == module:
                    fn.__module__ = __name__


_ACCESSORS = ("fget", "fset", "__func__")
_public_module_names()
