"""Images in: pretrained tags and their data configs, timm-equal transforms, ImageNet class
names, image folders and a parallel loader.

Nothing here imports the models: functions take names, configs and callables.
"""

from efficientvit_jax.data.tags import PretrainedTag, get_tag, list_tags
from efficientvit_jax.data.transforms import (
    DataConfig,
    EvalTransform,
    create_transform,
    load_image,
    resolve_data_config,
)

__all__ = [
    "DataConfig",
    "EvalTransform",
    "PretrainedTag",
    "create_transform",
    "get_tag",
    "list_tags",
    "load_image",
    "resolve_data_config",
]
