"""Shared fixtures of the SAM tests: MIT's L0 with random weights, its JAX conversion, and both
predictors with one photograph set, built once per test process.

The photograph is scikit-learn's china.jpg cropped to 411 x 627 (both odd: no side divides
the resize evenly). The reference is PyPI's ``efficientsam`` (``tests/reference-requirements.txt``);
modules that need it skip without it, as ``tests/zoo/test_sam_parity.py`` does. The modules
that use these fixtures share one pytest-xdist worker (``xdist_group("sam")``), so the model
is built and compiled once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

L0 = "efficientvit_sam_l0"


@pytest.fixture(scope="session")
def photo(photos: list[np.ndarray]) -> np.ndarray:
    """china.jpg cropped to 411 x 627 (a writable copy: torch warns on read-only arrays)."""
    return photos[0][3:414, 5:632].copy()


@pytest.fixture(scope="session")
def mit_l0() -> Any:
    """MIT's EfficientViT-SAM-L0 in eval mode: random weights, BatchNorm statistics and every
    norm's affine perturbed (as tests/zoo/test_sam_parity.py does)."""
    torch = pytest.importorskip("torch")
    zoo = pytest.importorskip(
        "efficientsam.sam_model_zoo",
        reason="pip install --no-deps -r tests/reference-requirements.txt",
    )
    torch.set_num_threads(2)
    del zoo  # imported above only to skip cleanly where the reference is missing
    return _sam_reference().reference(L0, seed=0)


def _sam_reference() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "zoo" / "_sam_reference.py"
    spec = importlib.util.spec_from_file_location("evit_sam_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def l0(mit_l0: Any) -> tuple[Any, dict[str, Any]]:
    """``(model, variables)``: our L0 with MIT's random weights converted."""
    from efficientvit_jax.zoo import create_model, load_mit_weights

    return create_model(L0), load_mit_weights(mit_l0.state_dict(), L0)


@pytest.fixture(scope="session")
def mit_predictor(mit_l0: Any, photo: np.ndarray) -> Any:
    from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

    predictor = EfficientViTSamPredictor(mit_l0)
    predictor.set_image(photo)
    return predictor


@pytest.fixture(scope="session")
def _session_predictor(l0: tuple[Any, dict[str, Any]], photo: np.ndarray) -> tuple[Any, tuple]:
    from efficientvit_jax.sam import SamPredictor

    predictor = SamPredictor(*l0)
    predictor.set_image(photo)
    state = (predictor.features, predictor.original_sizes, predictor.input_sizes)
    return predictor, state


@pytest.fixture
def predictor(_session_predictor: tuple[Any, tuple]) -> Any:
    """The session's ``SamPredictor`` (compiled once) with the photograph set, whatever an
    earlier test set."""
    predictor, (features, original, inputs) = _session_predictor
    predictor.features, predictor.original_sizes, predictor.input_sizes = features, original, inputs
    return predictor
