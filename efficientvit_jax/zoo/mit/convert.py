"""timm's ``efficientvit_b*`` / ``efficientvit_l*`` checkpoints as Flax variables: the key rules.

The Flax tree mirrors timm's module tree except where timm wraps modules: the residual
blocks' ``.main``, ``nn.Sequential`` indices in the aggregation and the classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from efficientvit_jax.zoo.convert import KeyRules, convert_state_dict
from efficientvit_jax.zoo.mit.model import MITConfig, variable_shapes

# Applied in order to the "/"-joined module path; "^" anchors at the model's top level.
MIT_RULES = KeyRules(
    what="timm EfficientViT (MIT) checkpoint",
    modules=(
        (r"^stem/res(\d+)/main/", r"stem.res\1.main."),
        (
            r"^stages_(\d+)/blocks_(\d+)/(context_module|local_module)/",
            r"stages.\1.blocks.\2.\3.main.",
        ),
        (r"^stages_(\d+)/blocks_(\d+)/main/", r"stages.\1.blocks.\2.main."),
        (r"aggreg_(\d+)/dw/", r"aggreg.\1.0."),
        (r"aggreg_(\d+)/pw/", r"aggreg.\1.1."),
        (r"^head/pre_fc/", "head.classifier.0."),
        (r"^head/norm/", "head.classifier.1."),
        (r"^head/fc/", "head.classifier.4."),
    ),
)


def timm_key(flax_path: str) -> str:
    """The timm state-dict key of a Flax variable path such as ``stem/in_conv/norm/scale``."""
    return MIT_RULES.key(flax_path.split("/"))


def mit_from_timm(state_dict: Mapping[str, Any], config: MITConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` from a timm EfficientViT (MIT) state dict.

    Every Flax variable is looked up by ``timm_key`` and transformed
    (conv kernels ``[O, I, kh, kw] -> [kh, kw, I, O]``, Linear transposed).
    Missing, unexpected and mis-shaped tensors are all collected and raised in
    one ``ValueError`` (a checkpoint of another variant names its tensors).
    """
    return convert_state_dict(state_dict, variable_shapes(config), MIT_RULES)
