"""Training for any flax linen classifier (and the zoo's segmentation models): train state,
jitted steps, data, checkpoints.

A whole run is ``train(TrainConfig(...), workdir)`` (``training.config``: the recipe as a
typed tree; ``TrainConfig()`` is the digits job, ``digits_seg_config(folder)`` the digits
segmentation job; a segmentation run is any config whose ``model.name`` is an
``efficientvit_seg_*`` model, on a segmentation dataset; fine-tuning EfficientViT-SAM on masks is
``training.sam.finetune_sam(SamTuneConfig(...), workdir)``). The pieces take any flax model as an
argument (only ``training.recipe`` builds the package's models, lazily). Typical use of
the pieces::

    optimizer = make_optimizer(3e-3, total_steps=1000)
    state = create_train_state(model, optimizer, seed, sample_images)
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    for epoch in range(epochs):
        for batch in iterate_batches(x, y, 64, seed=seed, epoch=epoch, remainder="drop"):
            state, metrics = train_step(state, batch)
"""

from efficientvit_jax.training.checkpoint import (
    Checkpointer,
    CheckpointError,
    Restored,
    SkippedStep,
    config_differences,
    config_to_dict,
)
from efficientvit_jax.training.config import (
    AugmentOptions,
    DataOptions,
    EMAOptions,
    MeshOptions,
    ModelOptions,
    OptimOptions,
    OutputOptions,
    PrecisionOptions,
    ScheduleOptions,
    TrainConfig,
)
from efficientvit_jax.training.data import Batch, epoch_order, iterate_batches, num_batches
from efficientvit_jax.training.run import train
from efficientvit_jax.training.state import TrainState, abstract_train_state, create_train_state
from efficientvit_jax.training.steps import (
    cross_entropy,
    evaluate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "AugmentOptions",
    "Batch",
    "CheckpointError",
    "Checkpointer",
    "DataOptions",
    "EMAOptions",
    "MeshOptions",
    "ModelOptions",
    "OptimOptions",
    "OutputOptions",
    "PrecisionOptions",
    "Restored",
    "ScheduleOptions",
    "SkippedStep",
    "TrainConfig",
    "TrainState",
    "abstract_train_state",
    "config_differences",
    "config_to_dict",
    "create_train_state",
    "cross_entropy",
    "epoch_order",
    "evaluate",
    "iterate_batches",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "num_batches",
    "train",
]
