"""SAM fine-tuning's loss against NumPy formulas written here, and the prompts sampled from
masks: instances, boxes within SAM's noise, points inside (or outside) their instance, the
same prompts for the same ``(seed, epoch, index)``."""

from __future__ import annotations

import numpy as np
import pytest

from efficientvit_jax.sam.transforms import apply_coords, preprocess_shape
from efficientvit_jax.training.sam_loss import sam_loss
from efficientvit_jax.training.sam_prompts import (
    IGNORED,
    PromptSpec,
    components,
    find_instances,
    grid_map,
    object_table,
    prompt_rng,
    sample_prompts,
)
from efficientvit_jax.zoo.sam.model import ABSENT_LABEL

# -- the loss ------------------------------------------------------------------------------


def _np_terms(x: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Focal, dice and IoU of one mask, in float64: the formulas of SAM's paper."""
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    focal = (alpha_t * (1 - p_t) ** 2 * ce * v).sum() / v.sum()
    dice = 1 - (2 * (p * t * v).sum() + 1) / ((p * v).sum() + (t * v).sum() + 1)
    pred = x > 0
    iou = (pred & (t > 0.5) & (v > 0)).sum() / ((pred | (t > 0.5)) & (v > 0)).sum()
    return focal, dice, iou


def test_the_loss_is_sams_focal_dice_and_iou_mse() -> None:
    rng = np.random.default_rng(0)
    p, h = 4, 12
    logits = rng.normal(0, 3, (p, 4, h, h)).astype(np.float32)
    targets = (rng.random((p, h, h)) < 0.3).astype(np.float32)
    valid = (rng.random((p, h, h)) < 0.9).astype(np.float32)
    iou_pred = rng.random((p, 4)).astype(np.float32)
    multi = np.array([True, False, True, False])
    weight = np.array([1, 1, 1, 0], np.float32)  # the last prompt is padding
    out = sam_loss(logits, iou_pred, targets, valid, multi, weight)

    losses, focals, dices, mses = [], [], [], []
    for i in range(p):
        terms = [_np_terms(logits[i, m].astype(np.float64), targets[i], valid[i]) for m in range(4)]
        per_mask = [20 * f + d for f, d, _ in terms]
        sq = [(iou_pred[i, m] - terms[m][2]) ** 2 for m in range(4)]
        m = 1 + int(np.argmin(per_mask[1:])) if multi[i] else 0
        mse = float(np.mean(sq[1:])) if multi[i] else sq[0]
        assert int(out["chosen"][i]) == m
        np.testing.assert_allclose(out["iou"][i], [t[2] for t in terms], rtol=1e-6)
        losses.append(per_mask[m] + mse)
        focals.append(terms[m][0])
        dices.append(terms[m][1])
        mses.append(mse)
    w = weight[:3]
    for key, values in (("loss", losses), ("focal", focals), ("dice", dices), ("iou_mse", mses)):
        expected = float(np.dot(values[:3], w) / w.sum())
        np.testing.assert_allclose(float(out[key]), expected, rtol=2e-5, err_msg=key)
        assert out[key].dtype == np.float32


def test_the_loss_is_float32_for_bfloat16_logits_and_zero_weight_is_finite() -> None:
    import jax.numpy as jnp

    logits = jnp.full((2, 4, 4, 4), 30.0, jnp.bfloat16)  # saturated: log(1 - p) would be -inf
    t = np.zeros((2, 4, 4), np.float32)
    out = sam_loss(logits, np.zeros((2, 4)), t, np.ones_like(t), np.array([True, False]),
                   np.zeros(2, np.float32))  # fmt: skip
    assert out["loss"].dtype == jnp.float32 and float(out["loss"]) == 0.0
    out = sam_loss(logits, np.zeros((2, 4)), t, np.ones_like(t), np.array([True, False]),
                   np.ones(2, np.float32))  # fmt: skip
    assert np.isfinite(float(out["loss"])) and float(out["focal"]) > 0


# -- instances -----------------------------------------------------------------------------

MASK = np.array(
    [
        [0, 1, 1, 0, 0, 0, 2, 2],
        [0, 1, 0, 0, 0, 0, 2, 0],
        [0, 0, 1, 0, 255, 0, 0, 0],  # (2, 2) touches (1, 1) diagonally: one component
        [0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 2, 0, 0, 1],  # (4, 7) alone: under min_area 2
        [1, 0, 0, 2, 2, 0, 0, 0],
    ],
    np.uint8,
)


def test_components_are_8_connected_per_class_in_raster_order() -> None:
    objects = object_table(3, background=0)
    got = components(MASK, objects)
    expected = np.array(
        [
            [0, 1, 1, 0, 0, 0, 2, 2],
            [0, 1, 0, 0, 0, 0, 2, 0],
            [0, 0, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [3, 3, 0, 0, 4, 0, 0, 5],
            [3, 0, 0, 4, 4, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(got, expected)
    small_gone = components(MASK, objects, min_area=2)
    np.testing.assert_array_equal(small_gone, np.where(expected == 5, 0, expected))
    # no background class: the zeros are one more instance
    assert components(MASK, object_table(3, background=None)).max() == 6


def test_components_agree_with_scipy_on_random_masks() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.choice([0, 1, 2], size=(40, 50), p=[0.5, 0.3, 0.2]).astype(np.uint8)
        ours = components(mask, object_table(3, background=0))
        count = 0
        for c in (1, 2):
            _, n = ndimage.label(mask == c, structure=np.ones((3, 3)))
            count += n
        assert ours.max() == count
        for k in range(1, count + 1):  # each of ours is one of scipy's, within one class
            region = ours == k
            assert len(np.unique(mask[region])) == 1
            labels, _ = ndimage.label(mask == mask[region][0], structure=np.ones((3, 3)))
            assert len(np.unique(labels[region])) == 1
            assert (labels == labels[region][0]).sum() == region.sum()


def test_the_grid_samples_the_instances_and_ignores_the_padding() -> None:
    inst = np.arange(6 * 8).reshape(6, 8).astype(np.int32)
    grid = grid_map(inst, 16, 32)  # a 32 frame: the 8-wide image is resized to 32 x 24
    nh, nw = preprocess_shape(6, 8, 32)
    assert (nh, nw) == (24, 32)
    assert (grid[12:] == IGNORED).all() and (grid[:12] >= 0).all()
    np.testing.assert_array_equal(grid[:12:2, ::2], inst)  # 2x2 cells per pixel


# -- prompts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instances():
    rng = np.random.default_rng(2)
    mask = np.zeros((50, 70), np.uint8)
    mask[5:20, 10:40] = 1
    mask[30:45, 50:66] = 2
    mask[25:28, 5:8] = 1
    mask[12, 12:20] = 255  # ignored pixels inside an instance
    mask[rng.random(mask.shape) < 0.02] = 255
    return find_instances(mask, object_table(3, background=0), 64, 128)


def test_boxes_hold_their_instance_within_sams_noise(instances) -> None:
    spec = PromptSpec(per_image=8, box_prob=1.0, prompt_size=128)
    size = instances.size
    for epoch in range(20):
        out = sample_prompts(instances, spec, prompt_rng(3, epoch, 0))
        assert (out["labels"][:, :2] == [2, 3]).all()
        assert (out["labels"][:, 2:] == ABSENT_LABEL).all() and not out["multi"].any()
        for k in range(spec.per_image):
            tight = apply_coords(instances.boxes[out["target"][k] - 1].reshape(2, 2), size, 128)
            side = tight[1] - tight[0]
            bound = np.minimum(0.1 * side, 20 * 128 / 1024) + 1e-4
            assert (np.abs(out["coords"][k, :2] - tight) <= bound).all()


def test_points_fall_inside_their_instance_and_negatives_outside(instances) -> None:
    spec = PromptSpec(per_image=8, box_prob=0.0, max_points=3, negative_prob=0.5, prompt_size=128)
    h, w = instances.size
    nh, nw = preprocess_shape(h, w, 128)
    seen = set()
    for epoch in range(20):
        out = sample_prompts(instances, spec, prompt_rng(3, epoch, 0))
        for k in range(spec.per_image):
            labels = out["labels"][k]
            n = int((labels >= 0).sum())
            assert labels[n] == -1 and (labels[n + 1 :] == ABSENT_LABEL).all()
            xy = out["coords"][k, :n] * [w / nw, h / nh]  # back to the image's pixels
            px = np.rint(xy).astype(int)
            on = instances.map[px[:, 1], px[:, 0]]
            target = out["target"][k]
            assert (on[labels[:n] == 1] == target).all()
            assert (on[labels[:n] == 0] != target).all() and (on[labels[:n] == 0] != IGNORED).all()
            assert out["multi"][k] == (n == 1)
            seen.add((int((labels[:n] == 1).sum()), int((labels[:n] == 0).sum())))
    assert {(1, 0), (3, 0), (1, 1), (3, 1)} <= seen


def test_prompts_are_a_function_of_seed_epoch_and_index(instances) -> None:
    spec = PromptSpec(per_image=5, prompt_size=128)

    def draw(*key: int) -> dict:
        return sample_prompts(instances, spec, prompt_rng(*key))

    a, b = draw(0, 1, 7), draw(0, 1, 7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    others = [draw(1, 1, 7), draw(0, 2, 7), draw(0, 1, 8)]
    assert all(not np.array_equal(a["coords"], o["coords"]) for o in others)
    # every instance prompted before any is prompted twice
    assert sorted(a["target"][:3]) == [1, 2, 3] and (a["weight"] == 1).all()


def test_an_image_without_instances_gives_weightless_prompts() -> None:
    empty = find_instances(np.zeros((8, 8), np.uint8), object_table(2, 0), 16, 32)
    out = sample_prompts(empty, PromptSpec(per_image=3, prompt_size=32), prompt_rng(0, 0, 0))
    assert (out["weight"] == 0).all() and (out["labels"] == ABSENT_LABEL).all()
