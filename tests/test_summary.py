"""summary: parameters by stage and XLA's FLOP count."""

import jax
import jax.numpy as jnp

import efficientvit_jax as ev
from efficientvit_jax.summary import summary

OPTS = dict(
    image_size=32, patch_size=8, embed_dim=16, depths=(1, 2), num_heads=(2, 4), num_classes=5
)


def test_groups_partition_the_parameter_tree():
    s = summary(flops=False, **OPTS)
    model = ev.build(**OPTS)
    tree = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 32, 32), jnp.float32)
    )
    assert s.total_params == sum(x.size for x in jax.tree.leaves(tree))
    assert list(s.params_by_group) == ["patch_embed", "stage_0", "stage_1", "head"]
    assert s.params_by_group["patch_embed"] == 3 * 8 * 8 * 16 + 16
    assert s.params_by_group["head"] == 2 * 32 + 32 * 5 + 5  # final_norm + classifier
    assert s.output_size == 5 and s.flops is None
    table = s.table()
    assert f"{s.total_params:,}" in table and "stage_1" in table


def test_flops_cover_the_matmuls_of_the_edifice_layout():
    # Edifice never changes the token count (16 tokens here), so the Dense
    # FLOPs are 2 * tokens * in * out per layer, counted from the options.
    # Widths of 64 and 128 keep the element-wise work (GELU, norms) small beside them.
    s = summary(layout="edifice", **{**OPTS, "embed_dim": 64, "num_heads": (4, 4)})
    n, d0, d1 = 16, 64, 128
    dense = [(192, d0), (d0, d1)]  # patch embed, downsample
    for d, depth in ((d0, 1), (d1, 2)):
        dense += [(d, d)] * 4 * depth + [(d, 4 * d), (4 * d, d)] * depth
    matmul = sum(2 * n * a * b for a, b in dense) + 2 * d1 * 5
    assert s.flops is not None
    assert matmul <= s.flops <= 1.25 * matmul, (s.flops, matmul)
