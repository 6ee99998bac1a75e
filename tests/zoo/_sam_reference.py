"""MIT's EfficientViT-SAM as the parity tests use it (efficientsam 1.0.0, installed by
``tests/reference-requirements.txt``): shared by ``tests/zoo/test_sam_parity.py`` and
``tests/sam/conftest.py``, loaded by file path (the test folders are not packages)."""

from __future__ import annotations

import warnings
from typing import Any


def reference(name: str, seed: int = 0) -> Any:
    """MIT's model ``name`` in eval mode: random weights, BatchNorm statistics and the affine
    of every norm (BatchNorm, LayerNorm, both LayerNorm2d) perturbed away from 1 and 0."""
    import torch
    from efficientsam.sam_model_zoo import create_efficientvit_sam_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecations in MIT's code
        model = create_efficientvit_sam_model(name.replace("_", "-"), pretrained=False).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.LayerNorm) or (
                type(mod).__name__ == "LayerNorm2d"
            ):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
    return model
