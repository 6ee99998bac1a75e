"""The pieces a ``TrainConfig`` names, built: the model and its data config, the pretrained
start (``Tuning``), the augmentation. ``training.run.train`` puts them together.

This is the one place in ``training`` that knows the package's models: the rest of it takes
any flax classifier as an argument. The model modules are imported lazily (they never import
``training``), so ``import efficientvit_jax.training`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from efficientvit_jax.training.config import TrainConfig
from efficientvit_jax.training.job import Tuning


def resolved_image_size(config: TrainConfig) -> int:
    """The side of the training images: the builder's, ``model.image_size``, or the tag's."""
    m = config.model
    if m.name is None:
        return m.builder.image_size
    if m.image_size is not None:
        return m.image_size
    from efficientvit_jax.data.tags import get_tag, split_name, tagged_models
    from efficientvit_jax.zoo import get_config

    cfg = get_config(m.name)  # first: an unknown name gets the registry's message
    if split_name(m.name)[0] in tagged_models():
        return get_tag(m.name).image_size
    return cfg.image_size  # a model without published tags (segmentation): its own size


def is_segmentation(config: TrainConfig) -> bool:
    """Whether ``config`` trains a segmentation model (a registered ``efficientvit_seg_*``)."""
    if config.model.name is None:
        return False
    from efficientvit_jax.zoo.registry import check_task, get_entry

    # a segment-anything model is refused here, before any work: its recipe is another
    if get_entry(config.model.name).task == "sam":
        raise ValueError(
            f"--model {config.model.name} is a segment-anything model: fine-tune it with "
            "training.sam.finetune_sam(SamTuneConfig(...)) (`efficientvit-jax train` takes it)"
        )
    tasks = ("classification", "segmentation")
    return check_task(config.model.name, tasks, "train").task == "segmentation"


def build_model(config: TrainConfig, num_classes: int, dtype_options: dict | None = None) -> Any:
    """The module of ``config.model`` with ``num_classes`` outputs, computing in
    ``dtype_options`` (``precision.dtype_options``; default float32)."""
    m, dt = config.model, dict(dtype_options or {})
    if m.name is None:
        from efficientvit_jax.model import EfficientViT

        return EfficientViT(m.builder.replace(num_classes=num_classes, **dt))
    from efficientvit_jax.zoo import create_model, get_config

    size = resolved_image_size(config)
    if m.remat != "none":
        dt["remat"] = m.remat
        if "remat" not in {f.name for f in dataclasses.fields(get_config(m.name))}:
            raise ValueError(
                f"model.remat (--remat): {m.name} has no rematerialisation; the MIT family and "
                "the segmentation models have"
            )
    return create_model(m.name, num_classes=num_classes, image_size=size, **dt)


# ImageNet's mean and std (timm's IMAGENET_DEFAULT_MEAN/STD) weighted as PIL's luma
# (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), for grey models trained on image folders.
GREY_MEAN = 0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406
GREY_STD = 0.299 * 0.229 + 0.587 * 0.224 + 0.114 * 0.225


def data_config(config: TrainConfig, model: Any, digits_stats: tuple | None = None) -> Any:
    """The evaluation ``data.DataConfig`` of the run (what ``create_transform`` takes).

    A tag: its own (timm's) at the training size. A segmentation model: its crop, bicubic
    (``segment`` and ``eval`` prepare whole images by the dataset's rule, not this size).
    The builder on folders: the whole image
    (crop 1.0), bilinear, ImageNet's statistics (for a grey model, ``--in-channels 1``: the images
    read as luminance, the statistics through the same luma weights). The digits: one grey
    channel, bilinear, the training split's mean and std (``digits_stats``), so a digit drawn in
    a file goes through the same steps as the arrays did.
    """
    from efficientvit_jax.data import DataConfig, resolve_data_config

    fmt, size = model.config.data_format, resolved_image_size(config)
    if is_segmentation(config):  # MIT's evaluation's: bicubic, ImageNet's statistics
        return DataConfig((3, size, size), "bicubic", crop_pct=1.0, data_format=fmt)
    if config.model.name is not None:
        return resolve_data_config(config.model.name, input_size=size, data_format=fmt)
    if digits_stats is not None or model.config.in_channels == 1:
        mean, std = digits_stats or (GREY_MEAN, GREY_STD)
        return DataConfig((1, size, size), "bilinear", (mean,), (std,), 1.0, data_format=fmt)
    return DataConfig((3, size, size), "bilinear", crop_pct=1.0, data_format=fmt)


def pretrained_tuning(
    config: TrainConfig, model: Any, num_classes: int, *, head: Sequence[str] | None = None
) -> Tuning:
    """The ``Tuning`` of ``model.weights``: load what fits, re-initialise the rest (named);
    what was re-initialised (the head) trains at ``optim.learning_rate``, the backbone at
    ``optim.backbone_lr_scale`` times it (or frozen). Reads the weights now, so a bad file
    fails before any write.

    ``head``: the parameter paths that train at the head's rate, as a run recorded them
    (``Tuning.head``, kept in its ``run.json``). Given, the weights file is not read at all:
    a resumed run restores every value from its checkpoint, and needs the file neither for
    its values nor to tell the head from the backbone (it may have moved since)."""
    from efficientvit_jax.training import finetune
    from efficientvit_jax.training.steps import make_optimizer

    m, o = config.model, config.optim
    if m.weights is None:
        return Tuning()
    shapes = param_shapes(model, resolved_image_size(config))
    if head is None:
        pretrained = load_pretrained_start(config, num_classes)
        head = _head_paths(config, shapes, pretrained["params"], num_classes)
        init = _pretrained_init(model, pretrained, m.weights)
    else:
        init = _no_init
    head = tuple(head)

    def optimizer(total: int) -> Any:
        def adamw(lr: float) -> Any:
            return make_optimizer(
                lr, total_steps=total, warmup_steps=config.schedule.warmup_steps,
                weight_decay=o.weight_decay,
            )  # fmt: skip

        backbone = None if m.freeze_backbone else adamw(o.learning_rate * o.backbone_lr_scale)
        return finetune.finetune_optimizer(adamw(o.learning_rate), backbone, shapes, head)

    def trainable(params: Any) -> Any:  # a frozen backbone's backward pass is never run
        return finetune.head_mask(params, head)

    return Tuning(
        optimizer=optimizer, init=init, frozen_backbone=m.freeze_backbone,
        trainable=trainable if m.freeze_backbone else None, head=head,
    )  # fmt: skip


def _head_paths(config: TrainConfig, shapes: Any, pretrained: Any, num_classes: int) -> list[str]:
    """What trains at the head's rate, frozen backbone or not. Segmentation: the modules that
    did not load (head or classifier). Classification: the leaves that did not load (the new
    classifier, and MSRA attention-bias tables of another image size: frozen at their random
    start they would never learn); when everything loads, the classifier."""
    from efficientvit_jax.training import finetune

    if is_segmentation(config):
        return new_modules(shapes, pretrained) or ["head/classifier"]
    return new_leaves(shapes, pretrained) or finetune.classifier_paths(shapes, num_classes)


def _pretrained_init(model: Any, pretrained: Any, weights: str) -> Callable[..., Any]:
    from efficientvit_jax.training import finetune

    def init(key: Any, sample_images: Any) -> Any:
        merged = finetune.init_from_pretrained(model, key, sample_images, pretrained)
        print(f"loaded {len(merged.loaded)} tensors from {weights}", flush=True)
        print(f"re-initialised {len(merged.reinitialised)}: {', '.join(merged.reinitialised)}")
        return merged.variables

    return init


def _no_init(*_: Any) -> Any:
    raise RuntimeError(
        "a run tuned from a recorded head restores its state from a checkpoint; it has no start"
    )


def param_shapes(model: Any, size: int) -> Any:
    """The model's parameter shapes (``jax.eval_shape``: nothing computed)."""
    import jax
    import jax.numpy as jnp

    from efficientvit_jax import ops

    cfg = model.config  # the core's or a zoo config: both name ``in_channels``
    c = cfg.in_channels
    shape = (1, c, size, size) if cfg.data_format == "NCHW" else (1, size, size, c)
    return ops.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]


def new_leaves(shapes: Any, pretrained: Any) -> list[str]:
    """The leaves (``"head/classifier/kernel"``) of parameter tree ``shapes`` that
    ``pretrained`` lacks or has in another shape: what fine-tuning initialises afresh."""
    from flax import traverse_util

    have = traverse_util.flatten_dict(dict(pretrained), sep="/")
    return sorted(
        path
        for path, leaf in traverse_util.flatten_dict(dict(shapes), sep="/").items()
        if path not in have or tuple(have[path].shape) != tuple(leaf.shape)
    )


def new_modules(shapes: Any, pretrained: Any) -> list[str]:
    """The modules (``"head/classifier"``) holding a leaf of ``new_leaves``."""
    return sorted({path.rsplit("/", 1)[0] for path in new_leaves(shapes, pretrained)})


def load_pretrained_start(config: TrainConfig, num_classes: int | None = None) -> dict[str, Any]:
    """Variables from a timm checkpoint (its classifier dropped when it has another size),
    a ``convert`` folder of the same architecture, or for a segmentation model one of MIT's
    checkpoints (``seg_pretrained_start``; ``num_classes``: the run's, to say whether the
    classifier is dropped)."""
    from efficientvit_jax.zoo.converted import load_converted_as

    m = config.model
    if not os.path.exists(m.weights):
        raise ValueError(f"--weights {m.weights}: no such file or folder")
    if is_segmentation(config) and not os.path.isdir(m.weights):
        return seg_pretrained_start(config, num_classes)
    if os.path.isdir(m.weights):
        # any head size: merge_pretrained re-initialises a classifier that does not fit
        return load_converted_as(m.name, m.weights)[1]
    variables, dropped = _timm_at_some_size(m.name, m.weights, resolved_image_size(config))
    if dropped:
        print(f"checkpoint classifier not loaded (another class count): {', '.join(dropped)}")
    return variables


def seg_pretrained_start(config: TrainConfig, num_classes: int | None) -> dict[str, Any]:
    """A segmentation model's start from a file: one of MIT's checkpoints of the variant (any
    class count: read at its own, so ``merge_pretrained`` re-initialises the classifier where
    it differs) or a timm checkpoint of the backbone (the head new). Prints what was left out."""
    from efficientvit_jax.zoo import get_config, load_mit_weights, seg_from_timm_backbone
    from efficientvit_jax.zoo.convert import load_state_dict
    from efficientvit_jax.zoo.seg import mit_key

    m = config.model
    sd = load_state_dict(m.weights)
    if not any(k.startswith("backbone.") for k in sd):  # timm's classifier: no "backbone."
        start = seg_from_timm_backbone(sd, m.name, seed=config.seed)
        print(f"timm classifier tensors not loaded: {', '.join(start.dropped) or 'none'}")
        return {c: {"backbone": start.variables[c]["backbone"]} for c in start.variables}
    cfg = get_config(m.name)
    key = mit_key("head/classifier/kernel", cfg)
    if key not in sd:
        raise ValueError(f"--weights {m.weights}: no {key}: not one of MIT's seg checkpoints")
    k = int(sd[key].shape[0])
    variables = load_mit_weights(sd, m.name, num_classes=k)
    if k != num_classes:
        head = [mit_key(f"head/classifier/{leaf}", cfg) for leaf in ("bias", "kernel")]
        print(f"checkpoint classifier not loaded (another class count, {k}): {', '.join(head)}")
    return variables


def _timm_at_some_size(name: str, weights: str, size: int) -> tuple[dict[str, Any], list[str]]:
    """A timm checkpoint read at ``size``, else at the tag's size: the MSRA models'
    attention-bias tables depend on the size the checkpoint was made for. Where the sizes
    differ, ``merge_pretrained`` re-initialises the tables that do not fit (and names them)."""
    from efficientvit_jax.data.tags import get_tag
    from efficientvit_jax.zoo import get_config, load_timm_backbone
    from efficientvit_jax.zoo.convert import ConversionError

    if "image_size" not in get_config(name).SHAPED_FIELDS:
        return load_timm_backbone(weights, name)
    error = None
    for s in dict.fromkeys([size, get_tag(name).image_size]):
        try:
            return load_timm_backbone(weights, name, image_size=s)
        except ConversionError as e:
            error = error or e
    raise error


def augmenter(level: str, data_config: Any, num_classes: int, model: str | None) -> tuple:
    """``(augment(path, rng) -> image, mix)`` of ``level``: ``none`` is the evaluation
    transform (resize, centre crop); ``light`` and ``strong`` are ``data.augment``'s, the
    latter with the recipe of the paper that trained ``model``. The augmentations work on
    ``[H, W, C]`` images; ``mix`` mixes a batch (``strong``) and lays it out as the model
    takes it."""
    from efficientvit_jax.data import augment, create_transform, load_image

    if level == "none":
        evaluate = create_transform(data_config)
        return (lambda path, rng: evaluate(path)), None
    recipe = augment.recipe_for_model(model or "")
    aug = augment.build_augment_from_config(
        level, data_config, num_classes=num_classes, recipe=recipe
    )
    nchw = data_config.data_format == "NCHW"

    def per_image(path: str, rng: Any) -> Any:
        return aug(load_image(path), rng)

    def mix(images: Any, labels: Any, rng: Any) -> tuple:
        if aug.mix is not None:
            images, labels = aug.mix(images, labels, rng)
        return (images.transpose(0, 3, 1, 2) if nchw else images), labels

    return per_image, mix


def seg_augmenter(config: TrainConfig, layout: str) -> Any:
    """The ``data.seg_augment.SegAugment`` of a segmentation run: ``augment.level`` and
    ``augment.scale_range`` around the evaluation size of the dataset's ``layout``, cropped
    to the training size."""
    from efficientvit_jax.data.seg_augment import SegAugment
    from efficientvit_jax.data.seg_transform import mit_eval_transform

    base = mit_eval_transform(layout).input_size
    a = config.augment
    return SegAugment(a.level, resolved_image_size(config), a.scale_range, base)


def describe_model(config: TrainConfig, model: Any) -> str:
    """One line naming the model a run trains (the builder's options in full: a from-scratch
    folder run must not hide which preset it took)."""
    if config.model.name is not None:
        start = f" from {config.model.weights}" if config.model.weights else " (random init)"
        return f"model {config.model.name}{start}"
    b = model.config
    shown = ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "mlp_ratio")
    opts = ", ".join(f"{k}={getattr(b, k)}" for k in shown)
    return f"model: the core builder ({opts}; random init)"


__all__ = [
    "augmenter",
    "build_model",
    "data_config",
    "describe_model",
    "is_segmentation",
    "new_leaves",
    "new_modules",
    "param_shapes",
    "pretrained_tuning",
    "resolved_image_size",
    "seg_augmenter",
    "seg_pretrained_start",
]
