"""EfficientViT-SAM: MIT's segment-anything models, their checkpoints, the registered variants.

``create_model("efficientvit_sam_l0")`` (or MIT's name, ``"efficientvit-sam-l0"``) builds one of
the five published variants (L0-L2, XL0, XL1); ``load_mit_weights(path, name)`` reads MIT's
released checkpoint files. The model's ``embed_images`` and ``decode`` methods are the two
halves a predictor calls (``model``'s docstring); ``ABSENT_LABEL`` pads prompts.
"""

from efficientvit_jax.zoo.sam import variants  # noqa: F401  (importing registers the variants)
from efficientvit_jax.zoo.sam.convert import (
    init_inputs,
    mit_key,
    sam_from_mit,
    sam_rules,
    variable_shapes,
)
from efficientvit_jax.zoo.sam.model import (
    ABSENT_LABEL,
    SAM_L0_BACKBONE,
    EfficientViTSam,
    ImageEncoder,
    MaskDecoder,
    PromptEncoder,
    SamConfig,
    SamNeck,
    TwoWayTransformer,
)
from efficientvit_jax.zoo.sam.variants import SAM_CONFIGS

__all__ = [
    "ABSENT_LABEL",
    "SAM_CONFIGS",
    "SAM_L0_BACKBONE",
    "EfficientViTSam",
    "ImageEncoder",
    "MaskDecoder",
    "PromptEncoder",
    "SamConfig",
    "SamNeck",
    "TwoWayTransformer",
    "init_inputs",
    "mit_key",
    "sam_from_mit",
    "sam_rules",
    "variable_shapes",
]
