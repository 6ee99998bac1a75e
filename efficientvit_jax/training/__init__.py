"""Training for any flax linen classifier: train state, jitted steps, data, checkpoints.

Nothing here imports the model modules; the CLI (``efficientvit-jax train``) wires an
``EfficientViT`` to these pieces. Typical use::

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
from efficientvit_jax.training.data import Batch, epoch_order, iterate_batches, num_batches
from efficientvit_jax.training.state import TrainState, create_train_state
from efficientvit_jax.training.steps import (
    cross_entropy,
    evaluate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "Batch",
    "CheckpointError",
    "Checkpointer",
    "Restored",
    "SkippedStep",
    "TrainState",
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
]
