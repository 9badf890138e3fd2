import numpy as np
import pytest

from modelscale.scaling import JointLaw

# Besiroglu et al. (2024) re-fit of Chinchilla (Hoffmann et al. 2022, approach 3).
TRUTH = JointLaw(E=1.82, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


def chinchilla_points(noise: float = 0.01, seed: int = 0):
    """60 runs: 10 model sizes in 1e7..1e10 × 6 data sizes in 1e9..1e12, loss × exp(N(0, noise))."""
    n, d = np.meshgrid(np.logspace(7, 10, 10), np.logspace(9, 12, 6))
    n, d = n.ravel(), d.ravel()
    loss = TRUTH.predict(n, d) * np.exp(np.random.default_rng(seed).normal(0.0, noise, n.size))
    return n, d, loss


@pytest.fixture(scope="session")
def points():
    return chinchilla_points()


@pytest.fixture(scope="session")
def joint_fit(points):
    from modelscale.scaling import fit_law

    n, d, loss = points
    return fit_law(loss, n=n, d=d, n_boot=200, seed=0)
