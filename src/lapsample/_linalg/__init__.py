"""Array kernels below the Hessian strategies and the marginals: small-block
Cholesky arithmetic and banded factorisations, solves, draws and selected inverses."""
