"""Loss, train and eval steps: real learning on a fixed subset, purity, masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax.training import (
    create_train_state,
    cross_entropy,
    iterate_batches,
    make_eval_step,
    make_optimizer,
    make_train_step,
)


def test_cross_entropy_matches_definition_and_masks():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = jnp.array([0, 2, 1])
    ref = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
    loss, acc = cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-6)
    assert acc == pytest.approx(1 / 3)
    loss_m, acc_m = cross_entropy(logits, labels, mask=jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(loss_m, ref[0], rtol=1e-6)
    assert acc_m == 1.0
    smooth, _ = cross_entropy(logits[:1], labels[:1], label_smoothing=0.3)
    targets = jnp.array([0.8, 0.1, 0.1])
    np.testing.assert_allclose(smooth, -(targets * jax.nn.log_softmax(logits[0])).sum(), rtol=1e-6)


def test_cross_entropy_is_float32_for_bf16_logits():
    logits = jnp.array([[3.0, -3.0]], jnp.bfloat16)
    loss, acc = cross_entropy(logits, jnp.array([0]))
    assert loss.dtype == jnp.float32 and acc.dtype == jnp.float32


def test_optimizer_rejects_bad_values():
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer(-1.0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        make_optimizer(1e-3, total_steps=0)


def test_optimizer_schedule_warms_up_and_decays():
    # adamw's first update has magnitude ~lr; it is 0 at step 0 of the warm-up.
    opt = make_optimizer(1.0, total_steps=10, warmup_steps=2, clip_norm=None, weight_decay=0.0)
    p = {"w": jnp.ones(())}
    s = opt.init(p)
    sizes = []
    for _ in range(10):
        u, s = opt.update({"w": jnp.ones(())}, s, p)
        sizes.append(abs(float(u["w"])))
    assert sizes[0] == 0.0 and sizes[2] == pytest.approx(1.0, rel=1e-3)
    assert sizes[9] < 0.1 * sizes[2]


# Edifice's layout learns much more slowly (no downsampling, a fixed 1-D filter over the
# flattened tokens): on the digits it reaches ~64% where the cascaded one reaches ~99%.
@pytest.mark.parametrize("layout,ratio", [("cascaded", 0.7), ("edifice", 0.95)])
def test_training_lowers_the_loss(layout, ratio, subset, optimizer, tiny_model, sample):
    """12 steps on a fixed 64-image subset: the loss on it must fall by a real margin."""
    x, y = subset
    model = tiny_model(layout)
    state = create_train_state(model, optimizer, 0, sample)
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    full = {"images": x, "labels": y}
    before = float(eval_step(state, full)["loss_sum"]) / len(y)
    losses = []
    for epoch in range(3):
        for batch in iterate_batches(x, y, 16, seed=0, epoch=epoch, remainder="drop"):
            state, m = train_step(state, batch)
            losses.append(float(m["loss"]))
    after = float(eval_step(state, full)["loss_sum"]) / len(y)
    assert int(state.step) == 12
    assert np.isfinite(losses).all()
    assert after < ratio * before, (before, after)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


@pytest.fixture(scope="module")
def dp_setup(optimizer, tiny_model):
    model = tiny_model(drop_path_rate=0.5)
    return model, make_train_step(model, optimizer, donate=False)


def test_train_step_is_pure_and_rng_comes_from_the_state(
    dp_setup, optimizer, subset, sample, tree_equal
):
    model, step = dp_setup
    x, y = subset
    batch = {"images": x[:16], "labels": y[:16]}
    state = create_train_state(model, optimizer, 1, sample)
    s1, m1 = step(state, batch)
    s2, m2 = step(state, batch)
    assert tree_equal(s1, s2) and float(m1["loss"]) == float(m2["loss"])
    assert int(s1.step) == 1 and tree_equal(s1.rng, state.rng)
    # same params at another step: another drop-path draw, so another loss
    _, m3 = step(state.replace(step=jnp.int32(5)), batch)
    assert float(m3["loss"]) != float(m1["loss"])


def test_train_step_ignores_masked_padding(dp_setup, optimizer, subset, sample):
    model, step = dp_setup
    x, y = subset
    state = create_train_state(model, optimizer, 2, sample)
    mask = np.array([1.0] * 12 + [0.0] * 4, np.float32)
    garbage = x[:16].copy()
    garbage[12:] = 100.0
    a, ma = step(state, {"images": x[:16], "labels": y[:16], "mask": mask})
    b, mb = step(state, {"images": garbage, "labels": y[:16], "mask": mask})
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_eval_step_padding_counts_once(digits16, optimizer, tiny_model, sample):
    model = tiny_model()
    state = create_train_state(model, optimizer, 0, sample)
    eval_step = make_eval_step(model)
    x, y = digits16.test_images[:50], digits16.test_labels[:50]
    whole = jax.device_get(eval_step(state, {"images": x, "labels": y}))
    parts = [
        jax.device_get(eval_step(state, b))
        for b in iterate_batches(x, y, 16, shuffle=False, remainder="pad")
    ]
    assert sum(p["count"] for p in parts) == 50 == whole["count"]
    assert sum(p["correct"] for p in parts) == whole["correct"]
    np.testing.assert_allclose(sum(p["loss_sum"] for p in parts), whole["loss_sum"], rtol=1e-5)


def test_donation_consumes_the_input_state(optimizer, tiny_model, sample):
    model = tiny_model()
    state = create_train_state(model, optimizer, 0, sample)
    step = make_train_step(model, optimizer)  # donate=True
    batch = {"images": np.zeros((16, 1, 16, 16), np.float32), "labels": np.zeros(16, np.int32)}
    new, _ = step(state, batch)
    assert int(new.step) == 1
    # the old state's buffers were handed to the new one (CPU supports donation too)
    assert all(x.is_deleted() for x in jax.tree.leaves(state.params))


def test_create_train_state_accepts_typed_keys(optimizer, tiny_model, sample, tree_equal):
    model = tiny_model()
    a = create_train_state(model, optimizer, jax.random.key(3), sample)
    b = create_train_state(model, optimizer, jax.random.PRNGKey(3), sample)
    assert a.rng.dtype == jnp.uint32 and tree_equal(a, b)
