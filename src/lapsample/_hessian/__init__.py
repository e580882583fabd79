"""Hessian strategies, one per module (as `lineax/_solver/`): how the curvature of
the negative log joint in theta is built, factorised once, and reused."""
