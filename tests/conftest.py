import jax
import jax.random as jr
import pytest


# Tests run in float64; the library itself never sets this flag.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Returns a function that gives a new, deterministic key on each call."""
    key = jr.key(20261127)

    def _getkey():
        nonlocal key
        key, sub = jr.split(key)
        return sub

    return _getkey
