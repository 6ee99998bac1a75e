"""timm's ``efficientvit_m*`` checkpoints as Flax variables: the key rules.

The Flax tree mirrors timm's module tree except where timm wraps modules: ``ResidualDrop``'s
``.m``, ``nn.Sequential`` indices, ``LocalWindowAttention``'s ``.m`` ahead of ``attn``.
timm's ``attention_bias_idxs`` is a derived buffer (``model.attention_bias_index`` rebuilds
it) and is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from efficientvit_jax.zoo.convert import KeyRules, convert_state_dict
from efficientvit_jax.zoo.msra.model import MSRAConfig, variable_shapes

# A whole path segment starts here: at the start or after a "/".
_SEG = r"(?<![^/])"

# Applied in order to the "/"-joined module path (a "/" after every segment).
MSRA_RULES = KeyRules(
    what="efficientvit_msra (timm) checkpoint",
    modules=(
        (_SEG + r"stages_(\d+)/", r"stages/\1/"),
        (_SEG + r"blocks_(\d+)/", r"blocks/\1/"),
        (_SEG + r"(res[12])_dw/", r"\1/0/m/"),
        (_SEG + r"(res[12])_ffn/", r"\1/1/m/"),
        (_SEG + r"(dw0|dw1|ffn0|ffn1|mixer)/", r"\1/m/"),
        (_SEG + r"(qkvs|dws)_(\d+)/", r"\1/\2/"),
        (_SEG + r"attn/proj/", r"attn/proj/1/"),
    ),
    ignored_suffixes=("attention_bias_idxs",),
)


def timm_key(collection: str, path: Sequence[str]) -> str:
    """The timm state-dict key of the Flax variable ``collection/path`` (``collection`` does
    not change the key: kept for callers of the old signature)."""
    del collection
    return MSRA_RULES.key(path)


def msra_from_timm(state_dict: Mapping[str, Any], config: MSRAConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` from a timm ``efficientvit_m*`` state dict.

    Every variable of the Flax model is looked up through ``timm_key``; conv
    kernels are transposed from ``[out, in, kh, kw]`` and the classifier from
    ``[out, in]``. timm's ``attention_bias_idxs`` and ``num_batches_tracked`` are ignored.
    Missing, unexpected and mis-shaped tensors (another variant's checkpoint,
    another ``num_classes``) are all reported in one ``ValueError``.
    """
    return convert_state_dict(state_dict, variable_shapes(config), MSRA_RULES)
