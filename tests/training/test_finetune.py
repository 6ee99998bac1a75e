"""Fine-tuning from converted timm checkpoints (MIT and MSRA, random weights): what loads,
what is re-initialised, the frozen backbone, and the CLI run on a folder of another class
count."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import pytest
from flax import traverse_util

from efficientvit_jax.cli import main
from efficientvit_jax.training import (
    DataOptions,
    ModelOptions,
    OptimOptions,
    ScheduleOptions,
    TrainConfig,
    create_train_state,
)
from efficientvit_jax.training.recipe import build_model, pretrained_tuning
from efficientvit_jax.training.steps import make_train_step
from efficientvit_jax.zoo import load_timm_weights

SIZE = 64  # the smallest size with a 2x2 last stage for both families


def _config(
    name: str, weights: str, *, freeze_backbone: bool = False, size: int = SIZE
) -> TrainConfig:
    return TrainConfig(
        data=DataOptions(folder="unused"),
        model=ModelOptions(name, weights, size, freeze_backbone=freeze_backbone),
        optim=OptimOptions(learning_rate=1e-3, weight_decay=0.05, backbone_lr_scale=0.1),
        schedule=ScheduleOptions(warmup_steps=0),
    )


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def test_init_from_pretrained_equals_merging_into_the_whole_init(
    random_variables: Any, monkeypatch: Any
) -> None:
    """Only the leaves that do not load are computed (the init program returns those alone),
    and they are bit for bit what ``model.init`` draws for them: the same merged variables
    and the same lists as ``merge_pretrained`` of the whole init."""
    from efficientvit_jax._once import run_once
    from efficientvit_jax.training import finetune
    from efficientvit_jax.zoo import create_model

    tiny = dict(widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8)
    model = create_model("efficientvit_b0", num_classes=5, **tiny)
    x = np.zeros((2, 3, 32, 32), np.float32)
    other = create_model("efficientvit_b0", num_classes=3, **tiny)  # another class count
    pretrained = random_variables(other, x, seed=1)
    computed = []

    def recording(fn: Any, *args: Any) -> Any:
        out = run_once(fn, *args)
        computed.append(sorted(out))
        return out

    monkeypatch.setattr(finetune, "run_once", recording)
    key = jax.random.PRNGKey(7)
    got = finetune.init_from_pretrained(model, key, x, pretrained)
    want = finetune.merge_pretrained(run_once(model.init, key, x), pretrained)
    head = ["params/head/fc/bias", "params/head/fc/kernel"]
    assert computed == [head] and list(got.reinitialised) == head
    assert got.loaded == want.loaded and got.reinitialised == want.reinitialised
    a, b = _flat(got.variables), _flat(want.variables)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


HEADS = {"efficientvit_b0": "head/fc", "efficientvit_m0": "head/linear"}


@pytest.mark.parametrize(
    "name", ["efficientvit_b0", pytest.param("efficientvit_m0", marks=pytest.mark.slow)]
)
def test_loaded_equal_the_checkpoint_head_is_new_frozen_backbone_stays(
    timm: Any, name: str, tmp_path: Any, make_timm_file: Any
) -> None:
    ckpt = make_timm_file(timm, name, tmp_path / "w.safetensors", img_size=SIZE)
    overrides = {"img_size": SIZE} if name.endswith("m0") else {}
    reference = load_timm_weights(ckpt, name, **overrides)  # the checkpoint, 1000 classes
    config = _config(name, ckpt, freeze_backbone=True)
    model = build_model(config, 3)
    tuning = pretrained_tuning(config, model, 3)
    optimizer = tuning.optimizer(10)
    x = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    state = create_train_state(model, optimizer, 0, x, init=tuning.init)

    got = {**_flat({"params": state.params}), **_flat({"batch_stats": state.batch_stats})}
    want = _flat(reference)
    head = f"params/{HEADS[name]}/"
    assert sorted(k for k in got if k.startswith(head)) == [head + "bias", head + "kernel"]
    assert got[head + "kernel"].shape[-1] == 3  # the new head: 3 classes
    for k, v in got.items():
        if not k.startswith(head):
            np.testing.assert_array_equal(v, want[k], err_msg=k)  # loaded exactly

    assert tuning.frozen_backbone and tuning.trainable is not None
    trainable = tuning.trainable(state.params)  # the head alone is differentiated
    marked = traverse_util.flatten_dict(trainable, sep="/")
    assert sorted(k for k, t in marked.items() if t) == [
        f"{HEADS[name]}/{n}" for n in ("bias", "kernel")
    ]
    assert len(marked) == len(_flat(state.params))
    step = make_train_step(
        model, optimizer, frozen_backbone=True, trainable=trainable, donate=False
    )
    batch = {"images": x, "labels": np.array([0, 1, 2, 0], np.int32)}
    losses, s = [], state
    for _ in range(5):
        s, m = step(s, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0]  # the head learns
    after = {**_flat({"params": s.params}), **_flat({"batch_stats": s.batch_stats})}
    for k, v in after.items():
        if k.startswith(head):
            assert not np.array_equal(v, got[k]), k
        else:  # every backbone tensor and BatchNorm statistic unchanged
            np.testing.assert_array_equal(v, got[k], err_msg=k)


@pytest.mark.slow
def test_tables_reinitialised_at_another_size_train_with_the_head(
    timm: Any, tmp_path: Any, make_timm_file: Any
) -> None:
    """An MSRA checkpoint of 224 px fine-tuned at 64: the attention-bias tables that do not
    fit are re-initialised, and they train with the head, with a frozen backbone too (left
    random and frozen, they would never learn); every tensor that loaded stays as it was."""
    name, size = "efficientvit_m0", SIZE
    ckpt = make_timm_file(timm, name, tmp_path / "w.safetensors")  # the tag's 224 px
    want = _flat(load_timm_weights(ckpt, name)["params"])
    config = _config(name, ckpt, freeze_backbone=True, size=size)
    model = build_model(config, 3)
    tuning = pretrained_tuning(config, model, 3)
    optimizer = tuning.optimizer(10)
    x = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    state = create_train_state(model, optimizer, 0, x, init=tuning.init)
    # timm starts each block's output BatchNorm scale at 0 (the branch begins as the
    # identity), which zeroes every gradient into the attention; a trained checkpoint's are
    # not 0. Loaded values all the same, which must stay.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 1.0 if jax.tree_util.keystr(p).endswith("['scale']") else v,
        state.params,
    )
    state = state.replace(params=params, opt_state=optimizer.init(params))
    before = _flat(state.params)
    new = {k for k, v in before.items() if k not in want or want[k].shape != v.shape}
    assert {k for k in new if not k.startswith("head/")}  # some tables did not fit
    assert all("attention_biases" in k for k in new if not k.startswith("head/")), new

    trainable = tuning.trainable(state.params)
    step = make_train_step(
        model, optimizer, frozen_backbone=True, trainable=trainable, donate=False
    )
    batch = {"images": x, "labels": np.array([0, 1, 2, 0], np.int32)}
    s = state
    for _ in range(2):
        s, _ = step(s, batch)
    after = _flat(s.params)
    moved = sorted(k for k in before if not np.array_equal(after[k], before[k]))
    # The last stage's grid is 1x1 at 64 px: one bias per head under a softmax over one key,
    # which no gradient reaches. Every other new leaf trained, and nothing else moved.
    learnable = sorted(k for k in new if before[k].shape[-1] > 1)
    assert moved == learnable and any("attention_biases" in k for k in learnable), moved


@pytest.mark.slow
def test_cli_fine_tunes_on_a_folder_of_another_class_count(
    timm: Any, tmp_path: Any, image_files: dict, make_class_tree: Any, capsys: Any,
    make_timm_file: Any,
) -> None:  # fmt: skip
    # a checkpoint fine-tuned on 5 classes, fine-tuned again on 3
    ckpt = make_timm_file(timm, "efficientvit_b0", tmp_path / "w.safetensors", num_classes=5)
    kinds = sorted(image_files)
    tree = {
        c: [image_files[kinds[(i + j) % len(kinds)]] for j in range(4)] for i, c in enumerate("abc")
    }
    make_class_tree(str(tmp_path / "d" / "train"), tree)
    make_class_tree(str(tmp_path / "d" / "val"), tree)
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "d"), "--model", "efficientvit_b0", "--weights", ckpt]
    argv += ["--image-size", str(SIZE), "--batch-size", "12", "--epochs", "8", "--augment", "none"]
    argv += ["--learning-rate", "3e-3", "--warmup-steps", "0", "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    dropped = "head.classifier.4.bias, head.classifier.4.weight"
    assert f"checkpoint classifier not loaded (another class count): {dropped}" in text
    assert "re-initialised 2: params/head/fc/bias, params/head/fc/kernel" in text
    m = json.loads((out / "metrics.json").read_text())
    assert np.mean(m["step_losses"][-2:]) < m["step_losses"][0]
