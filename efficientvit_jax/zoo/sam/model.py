"""EfficientViT-SAM (MIT, arXiv 2402.05008) in Flax: MIT's image encoder, Meta's SAM decoder.

The image encoder is an MIT EfficientViT backbone (``zoo.mit``: the L series, or the five-stage
XL backbones) and MIT's ``SamNeck``: three stage maps projected to 256 channels (1x1 conv + BN),
resized bicubically to 64x64 (PyTorch's kernel, ``zoo.seg.resize``), summed, residual
FusedMBConv blocks, a 1x1 conv with bias and a LayerNorm2d. The prompt encoder, two-way
transformer and mask decoder are Meta's ``segment_anything`` ones with SAM's sizes, every norm
at MIT's epsilon (its zoo's ``set_norm_eps(model, 1e-6)``).

The model has three entry points (``EfficientViTSam``): ``embed_images`` runs the encoder once
per image, ``decode`` turns an image's embedding and a batch of prompts into low-resolution mask
logits and IoU predictions, ``__call__`` chains both (for ``init``). Prompts are points with
SAM's labels (a box is its two corners, labels 2 and 3, as Meta's ONNX export passes it), plus
``ABSENT_LABEL``: padding that no other token sees, so that prompts of different lengths can
share one compiled program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax import layers
from efficientvit_jax._linen import Dense, FastParams, LayerNorm
from efficientvit_jax.zoo.base import ACTIVATIONS, TORCH_KERNEL_INIT
from efficientvit_jax.zoo.mit import ConvNormAct, EfficientViTMIT, MITConfig, Residual
from efficientvit_jax.zoo.seg.resize import interpolate

DataFormat = Literal["NCHW", "NHWC"]

# A prompt token that is not there: its embedding is zero and every attention masks it out as a
# key, so a prompt padded with such tokens decodes as the prompt without them. SAM's own labels:
# 1 positive point, 0 negative point, -1 "not a point" (SAM's pad token, embedded), 2 and 3 a
# box's top-left and bottom-right corners.
ABSENT_LABEL = -2

# MIT's SAM zoo sets every norm's epsilon (BatchNorm, LayerNorm, LayerNorm2d) to 1e-6; LiteMLA's
# normaliser keeps MIT's 1e-15 (timm's port has 1e-5).
SAM_NORM_EPS = 1e-6
MIT_ATTN_EPS = 1e-15

SAM_L0_BACKBONE = MITConfig(
    widths=(32, 64, 128, 256, 512),
    depths=(1, 1, 1, 4, 4),
    head_dim=32,
    stem_block="conv",
    stage_kinds=("fused", "fused", "mbconv", "attention"),
    fewer_norm=(False, False, True, True),
    down_expand=(16, 16, 16, 24),
    block_expand=(4, 4, 4, 6),
    downsample_in_depth=False,
    act="gelu_tanh",
    norm_eps=SAM_NORM_EPS,
    attn_eps=MIT_ATTN_EPS,
    num_classes=0,
    image_size=512,
)


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Architecture of one EfficientViT-SAM variant (defaults: MIT's ``efficientvit-sam-l0``).

    Attributes:
      backbone: the image encoder's ``MITConfig`` (its layout, dtypes, input channels and
        image size are ignored: the fields below set them).
      neck_strides: the backbone strides the neck takes, finest first (L: 8, 16, 32; XL: 16,
        32, 64).
      neck_width, neck_depth, neck_expand, neck_block: the neck's width, its residual middle
        blocks, their expansion ratio and kind (MIT's ``"fmb"``: ``"fused"``).
      embed_dim: channels of the image embedding and of every prompt token (256).
      embed_size: side of the image embedding (64); mask inputs and low-resolution masks are
        4x that (256).
      prompt_size: side of the frame the point coordinates refer to (1024: SAM's resized image,
        MIT's ``image_size[0]``), whatever the encoder's input side.
      mask_in_chans: hidden channels of the mask-input downscaling (16).
      decoder_depth, decoder_heads, decoder_mlp_dim, attention_downsample: the two-way
        transformer (2 blocks, 8 heads, MLP 2048, cross-attention at half width).
      num_multimask_outputs: masks besides the single-mask output (3).
      iou_head_depth, iou_head_hidden: the IoU-prediction MLP.
      norm_eps: epsilon of every LayerNorm (and the backbone's BatchNorms: ``backbone``).
      image_size: the encoder's square input side (512 for L, 1024 for XL), the default of
        export and summaries; the encoder takes any side divisible by the backbone's
        ``reduction`` and always makes an ``embed_size`` embedding.
      in_channels: image channels.
      data_format: layout of images, embeddings, mask inputs and mask logits: ``"NCHW"``
        (MIT's) or ``"NHWC"``.
      dtype: computation dtype; param_dtype: parameter dtype.
    """

    SHAPED_FIELDS: ClassVar[tuple[str, ...]] = ("in_channels",)

    backbone: MITConfig = SAM_L0_BACKBONE
    neck_strides: tuple[int, ...] = (8, 16, 32)
    neck_width: int = 256
    neck_depth: int = 4
    neck_expand: float = 1
    neck_block: Literal["fused", "mbconv"] = "fused"
    embed_dim: int = 256
    embed_size: int = 64
    prompt_size: int = 1024
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden: int = 256
    norm_eps: float = SAM_NORM_EPS
    image_size: int = 512
    in_channels: int = 3
    data_format: DataFormat = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "neck_strides", tuple(self.neck_strides))
        if not isinstance(self.backbone, MITConfig):
            raise ValueError(f"backbone must be an MITConfig, got {type(self.backbone).__name__}")
        if self.neck_block not in ("fused", "mbconv"):
            raise ValueError(f"neck_block must be 'fused' or 'mbconv', got {self.neck_block!r}")
        if self.data_format not in ("NCHW", "NHWC"):
            raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {self.data_format!r}")
        strides = [2 ** (i + 2) for i in range(len(self.backbone.widths) - 1)]
        if not self.neck_strides or any(s not in strides for s in self.neck_strides):
            raise ValueError(
                f"neck_strides must be among the backbone's {strides}, got {self.neck_strides}"
            )
        r = self.backbone.reduction
        if self.image_size < r or self.image_size % r:
            raise ValueError(f"image_size must be a multiple of {r}, got {self.image_size}")
        if (self.embed_dim // self.attention_downsample) % self.decoder_heads:
            raise ValueError("decoder_heads must divide embed_dim // attention_downsample")

    @property
    def num_classes(self) -> int:
        """0: no classifier (the zoo protocol's field; SAM's outputs are masks)."""
        return 0

    @property
    def num_mask_tokens(self) -> int:
        """Mask tokens of the decoder: the single-mask output and the multimask ones."""
        return self.num_multimask_outputs + 1

    @property
    def mask_size(self) -> int:
        """Side of the mask inputs and of the low-resolution mask logits (256)."""
        return 4 * self.embed_size

    @property
    def backbone_config(self) -> MITConfig:
        """The backbone's config with this model's layout, dtypes, input channels and size."""
        return dataclasses.replace(
            self.backbone,
            data_format=self.data_format,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            in_channels=self.in_channels,
            image_size=self.image_size,
        )


def layer_norm(x: jax.Array, cfg: SamConfig, name: str) -> jax.Array:
    """PyTorch's LayerNorm over the last axis (on NHWC maps: SAM's and MIT's LayerNorm2d), in
    float32 whatever the compute dtype, returned in it. Call from a compact method."""
    norm = LayerNorm(
        epsilon=cfg.norm_eps,
        use_fast_variance=False,
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        name=name,
    )
    return norm(x.astype(jnp.float32)).astype(cfg.dtype)


def dense(features: int, cfg: SamConfig, name: str) -> Dense:
    """A Linear with bias and PyTorch's kernel init."""
    return Dense(
        features,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=TORCH_KERNEL_INIT,
        name=name,
    )


def to_nhwc(x: jax.Array, cfg: SamConfig) -> jax.Array:
    """A map in ``cfg.data_format`` as NHWC."""
    return jnp.transpose(x, (0, 2, 3, 1)) if cfg.data_format == "NCHW" else x


def from_nhwc(x: jax.Array, cfg: SamConfig) -> jax.Array:
    """An NHWC map in ``cfg.data_format``."""
    return jnp.transpose(x, (0, 3, 1, 2)) if cfg.data_format == "NCHW" else x


# --------------------------------------------------------------------------- image encoder


class SamNeck(nn.Module):
    """MIT's ``SamNeck`` on the backbone's maps (NHWC): ``inputs_{stride}`` (1x1 conv + BN) each
    resized to ``embed_size`` bicubically, summed; ``middle_{j}`` residual blocks; ``output``
    (1x1 conv with bias) to ``embed_dim`` channels."""

    config: SamConfig

    @nn.compact
    def __call__(self, feats: dict[int, jax.Array], *, train: bool = False) -> jax.Array:
        cfg = self.config
        bcfg = cfg.backbone_config
        size = (cfg.embed_size, cfg.embed_size)
        resized = []
        for stride in cfg.neck_strides:
            y = ConvNormAct(cfg.neck_width, 1, config=bcfg, name=f"inputs_{stride}")(
                feats[stride], train=train
            )
            # MIT's UpSampleLayer resizes in float32 (and passes a map of the right size as is)
            resized.append(interpolate(y.astype(jnp.float32), size, "bicubic").astype(cfg.dtype))
        # MIT's list_sum over its inputs, coarsest first: s32 + (s16 + s8), in that order
        x = resized[0]
        for y in resized[1:]:
            x = y + x
        for j in range(cfg.neck_depth):
            # MIT's neck blocks: BatchNorm after every conv, no biases (fewer_norm=False)
            x = Residual(cfg.neck_block, cfg.neck_expand, False, bcfg, name=f"middle_{j}")(
                x, train=train
            )
        return layers.Conv2d(
            cfg.embed_dim,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=TORCH_KERNEL_INIT,
            name="output",
        )(x)


class ImageEncoder(nn.Module):
    """MIT backbone (``backbone``), ``SamNeck`` (``neck``), LayerNorm2d (``norm``): images in
    ``config.data_format`` -> NHWC embeddings ``[B, embed_size, embed_size, embed_dim]``."""

    config: SamConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        feats = EfficientViTMIT(cfg.backbone_config, name="backbone")(
            images, train=train, features=True
        )
        by_stride = {2 ** (i + 2): f for i, f in enumerate(feats)}
        x = SamNeck(cfg, name="neck")(by_stride, train=train)
        return layer_norm(x, cfg, "norm")


# --------------------------------------------------------------------------- prompt encoder


class Embedding(FastParams, nn.Module):
    """A learned table ``[num, features]`` (PyTorch's ``nn.Embedding`` weight, N(0, 1) init),
    returned whole: SAM adds its rows by label, it never looks them up by index."""

    num: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        init = nn.initializers.normal(1.0)
        return self.param("embedding", init, (self.num, self.features), self.param_dtype)


class PositionEmbeddingRandom(nn.Module):
    """SAM's random-Fourier positional encoding of coordinates in [0, 1]^2.

    ``[..., 2]`` (x, y) -> ``[..., 2 * num_feats]`` float32: ``sin`` and ``cos`` of
    ``2 pi (2 c - 1) @ G``. ``G`` ``[2, num_feats]`` is fixed (a PyTorch buffer), so it lives in
    the ``"constants"`` collection, out of ``params`` and of any optimiser.
    """

    num_feats: int

    @nn.compact
    def __call__(self, coords: jax.Array) -> jax.Array:
        gaussian = self.variable(
            "constants",
            "positional_encoding_gaussian_matrix",
            lambda: jax.random.normal(self.make_rng("params"), (2, self.num_feats), jnp.float32),
        ).value.astype(jnp.float32)
        c = 2 * coords.astype(jnp.float32) - 1
        # an elementwise product-sum, not a matmul: exact float32 on every backend (a matmul may
        # run in reduced precision on accelerators, and sin of ~100 radians would show it)
        proj = 2 * math.pi * (c[..., 0:1] * gaussian[0] + c[..., 1:2] * gaussian[1])
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def grid_coords(size: int) -> jax.Array:
    """Centres of a ``size`` x ``size`` grid in [0, 1]^2, ``[size, size, 2]`` (x, y)."""
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    ys, xs = jnp.meshgrid(centres, centres, indexing="ij")
    return jnp.stack([xs, ys], axis=-1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder: sparse point tokens, the dense mask embedding, the image's PE.

    Submodules as SAM's: ``pe_layer``, ``point_embeddings_{0..3}`` (negative, positive, box
    corners), ``not_a_point_embed``, ``no_mask_embed``, ``mask_downscaling_{0,1,3,4,6}``.
    """

    config: SamConfig

    @nn.compact
    def __call__(
        self, coords: jax.Array, labels: jax.Array, mask_input: jax.Array, has_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(sparse [P, N, C], dense [P, S, S, C], image_pe [S, S, C])``, NHWC, compute dtype.

        ``coords`` ``[P, N, 2]`` in the prompt frame, ``labels`` ``[P, N]``, ``mask_input``
        ``[P, 4S, 4S, 1]``, ``has_mask`` ``[P]``.
        """
        cfg = self.config
        pe = PositionEmbeddingRandom(cfg.embed_dim // 2, name="pe_layer")
        sparse = self.embed_points(pe, coords, labels)
        dense = self.embed_masks(mask_input, has_mask)
        image_pe = pe(grid_coords(cfg.embed_size))
        return sparse.astype(cfg.dtype), dense, image_pe.astype(cfg.dtype)

    def embed_points(self, pe: nn.Module, coords: jax.Array, labels: jax.Array) -> jax.Array:
        """SAM's ``_embed_points`` and ``_embed_boxes`` in one: the PE of the pixel centres
        (``+ 0.5``, over ``prompt_size``), zero for "not a point" (-1) and ABSENT tokens, plus
        the label's embedding (ABSENT: none)."""
        cfg = self.config
        d = cfg.embed_dim
        enc = pe((coords.astype(jnp.float32) + 0.5) / cfg.prompt_size)
        lab = labels[..., None]
        # jnp.where, not a product: a padded token's coordinates may be anything, even NaN
        enc = jnp.where((lab == -1) | (lab == ABSENT_LABEL), 0.0, enc)
        table = Embedding(1, d, cfg.param_dtype, name="not_a_point_embed")()
        enc = enc + jnp.where(lab == -1, table[0].astype(jnp.float32), 0.0)
        for i in range(4):
            table = Embedding(1, d, cfg.param_dtype, name=f"point_embeddings_{i}")()
            enc = enc + jnp.where(lab == i, table[0].astype(jnp.float32), 0.0)
        return enc

    def embed_masks(self, mask_input: jax.Array, has_mask: jax.Array) -> jax.Array:
        """SAM's ``mask_downscaling`` of the mask inputs where ``has_mask``, else its
        ``no_mask_embed`` everywhere (the choice of Meta's ONNX export, per prompt)."""
        cfg = self.config
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "kernel_init": TORCH_KERNEL_INIT}
        gelu = ACTIVATIONS["gelu"]  # nn.GELU: the exact erf form
        pad = ((0, 0), (0, 0))
        c = cfg.mask_in_chans
        x = layers.Conv2d(c // 4, 2, 2, padding=pad, name="mask_downscaling_0", **kw)(
            mask_input.astype(cfg.dtype)
        )
        x = gelu(layer_norm(x, cfg, "mask_downscaling_1"))
        x = layers.Conv2d(c, 2, 2, padding=pad, name="mask_downscaling_3", **kw)(x)
        x = gelu(layer_norm(x, cfg, "mask_downscaling_4"))
        x = layers.Conv2d(cfg.embed_dim, 1, name="mask_downscaling_6", **kw)(x)
        no_mask = Embedding(1, cfg.embed_dim, cfg.param_dtype, name="no_mask_embed")()
        no_mask = jnp.broadcast_to(no_mask[0].astype(cfg.dtype), x.shape)
        return jnp.where(has_mask[:, None, None, None] != 0, x, no_mask)


# --------------------------------------------------------------------------- mask decoder


class Attention(nn.Module):
    """SAM's attention: q/k/v projected to ``embed_dim // downsample``, ``heads`` heads, softmax
    (in float32) over the keys, ``out_proj``. ``key_mask`` ``[B, K]`` (True: attend) drops keys;
    at least one key of every row must be kept."""

    config: SamConfig
    downsample: int = 1

    @nn.compact
    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        inner, h = cfg.embed_dim // self.downsample, cfg.decoder_heads
        q, k, v = (
            dense(inner, cfg, name)(t).reshape(*t.shape[:-1], h, inner // h)
            for name, t in (("q_proj", q), ("k_proj", k), ("v_proj", v))
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / math.sqrt(inner // h)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
        out = out.astype(cfg.dtype).reshape(*out.shape[:2], inner)
        return dense(cfg.embed_dim, cfg, "out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
    """SAM's block: token self-attention, tokens -> image, token MLP (ReLU), image -> tokens;
    each a residual followed by a LayerNorm (``norm1`` .. ``norm4``). The first block's
    self-attention sees no PE and replaces the tokens (SAM's ``skip_first_layer_pe``)."""

    config: SamConfig
    skip_first_layer_pe: bool = False

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        keys: jax.Array,
        query_pe: jax.Array,
        key_pe: jax.Array,
        token_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        down = cfg.attention_downsample
        if self.skip_first_layer_pe:
            queries = Attention(cfg, name="self_attn")(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + Attention(cfg, name="self_attn")(q, q, queries, token_mask)
        queries = layer_norm(queries, cfg, "norm1")

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(cfg, down, name="cross_attn_token_to_image")(q, k, keys)
        queries = layer_norm(queries, cfg, "norm2")

        mlp = MLPBlock(cfg, name="mlp")
        queries = layer_norm(queries + mlp(queries), cfg, "norm3")

        q, k = queries + query_pe, keys + key_pe
        attn = Attention(cfg, down, name="cross_attn_image_to_token")
        keys = layer_norm(keys + attn(k, q, queries, token_mask), cfg, "norm4")
        return queries, keys


class MLPBlock(nn.Module):
    """SAM's transformer MLP: ``lin1``, ReLU (the transformer's activation), ``lin2``."""

    config: SamConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = jax.nn.relu(dense(cfg.decoder_mlp_dim, cfg, "lin1")(x))
        return dense(cfg.embed_dim, cfg, "lin2")(x)


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer: ``layers_{i}``, then the tokens attend to the image once more
    (``final_attn_token_to_image``, ``norm_final_attn``). Returns ``(tokens, image tokens)``."""

    config: SamConfig

    @nn.compact
    def __call__(
        self, image: jax.Array, image_pe: jax.Array, tokens: jax.Array, token_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        queries, keys = tokens, image
        for i in range(cfg.decoder_depth):
            block = TwoWayAttentionBlock(cfg, skip_first_layer_pe=i == 0, name=f"layers_{i}")
            queries, keys = block(queries, keys, tokens, image_pe, token_mask)
        q, k = queries + tokens, keys + image_pe
        final = Attention(cfg, cfg.attention_downsample, name="final_attn_token_to_image")
        queries = layer_norm(queries + final(q, k, keys), cfg, "norm_final_attn")
        return queries, keys


class MLP(nn.Module):
    """SAM's ``MLP``: ``depth`` Linears (``layers_{j}``), ReLU between them."""

    config: SamConfig
    hidden: int
    features: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.depth):
            last = j == self.depth - 1
            x = dense(self.features if last else self.hidden, self.config, f"layers_{j}")(x)
            x = x if last else jax.nn.relu(x)
        return x


class MaskDecoder(nn.Module):
    """SAM's mask decoder: the IoU and mask tokens before the prompt's, the two-way
    transformer over the image embedding plus the dense prompt, the embedding upscaled 4x
    (``output_upscaling_{0,1,3}``: ConvTranspose, LayerNorm2d, GELU, ConvTranspose, GELU), one
    hypernetwork MLP per mask token, the IoU head."""

    config: SamConfig

    @nn.compact
    def __call__(
        self,
        embeddings: jax.Array,
        image_pe: jax.Array,
        sparse: jax.Array,
        dense_prompt: jax.Array,
        token_mask: jax.Array,
        multimask_output: bool | None,
    ) -> tuple[jax.Array, jax.Array]:
        """``(mask logits, iou)`` float32 for ``[P, N, C]`` prompt tokens: logits
        ``[P, M, 4S, 4S]`` (NCHW) or ``[P, 4S, 4S, M]`` (NHWC), M = 3, 1 or (``None``) 4."""
        cfg = self.config
        p, n_masks = sparse.shape[0], cfg.num_mask_tokens
        iou_token = Embedding(1, cfg.embed_dim, cfg.param_dtype, name="iou_token")()
        mask_tokens = Embedding(n_masks, cfg.embed_dim, cfg.param_dtype, name="mask_tokens")()
        out_tokens = jnp.concatenate([iou_token, mask_tokens]).astype(cfg.dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(out_tokens, (p, *out_tokens.shape)), sparse], 1)
        # the output tokens are always attended to: no row of an attention is empty
        keep = jnp.concatenate([jnp.ones((p, 1 + n_masks), bool), token_mask], axis=1)

        src = embeddings.astype(cfg.dtype) + dense_prompt  # one image broadcasts over prompts
        _, s, _, c = src.shape
        pos = jnp.broadcast_to(image_pe.reshape(1, s * s, c), (p, s * s, c))
        hs, src = TwoWayTransformer(cfg, name="transformer")(
            src.reshape(p, s * s, c), pos, tokens, keep
        )
        upscaled = self.upscale(src.reshape(p, s, s, c))

        hyper = jnp.stack(
            [
                MLP(cfg, cfg.embed_dim, c // 8, 3, name=f"output_hypernetworks_mlps_{i}")(
                    hs[:, 1 + i]
                )
                for i in range(n_masks)
            ],
            axis=1,
        )
        iou_head = MLP(
            cfg, cfg.iou_head_hidden, n_masks, cfg.iou_head_depth, name="iou_prediction_head"
        )
        iou = iou_head(hs[:, 0]).astype(jnp.float32)
        # multimask: SAM's masks [1:], else [0:1], None all four (fine-tuning: one call serves
        # ambiguous and plain prompts); only the returned masks are computed (every
        # hypernetwork runs: they are small, and each must own its variables)
        if multimask_output is None:
            chosen = slice(None)
        else:
            chosen = slice(1, None) if multimask_output else slice(0, 1)
        spec = "pmc,phwc->pmhw" if cfg.data_format == "NCHW" else "pmc,phwc->phwm"
        masks = jnp.einsum(spec, hyper[:, chosen], upscaled, preferred_element_type=jnp.float32)
        return masks, iou[:, chosen]

    def upscale(self, x: jax.Array) -> jax.Array:
        """``output_upscaling``: two stride-2 2x2 ConvTransposes (PyTorch's semantics: the
        kernel ``[kh, kw, out, in]`` is a converted ConvTranspose2d weight as it is)."""
        cfg = self.config
        gelu = ACTIVATIONS["gelu"]  # nn.GELU: the exact erf form
        c = cfg.embed_dim

        def up(features: int, name: str) -> nn.ConvTranspose:
            return nn.ConvTranspose(
                features, (2, 2), strides=(2, 2), padding="VALID", transpose_kernel=True,
                dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_init=TORCH_KERNEL_INIT,
                name=name,
            )  # fmt: skip

        x = up(c // 4, "output_upscaling_0")(x)
        x = gelu(layer_norm(x, cfg, "output_upscaling_1"))
        return gelu(up(c // 8, "output_upscaling_3")(x))


# --------------------------------------------------------------------------- the model


class EfficientViTSam(nn.Module):
    """EfficientViT-SAM: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``, equal to MIT's.

    Methods (``model.apply(variables, ..., method=...)``):

    - ``embed_images(images)``: normalised, padded images -> image embeddings.
    - ``decode(embeddings, coords, labels, mask_input, has_mask_input, multimask_output)``:
      prompts -> ``(low_res_logits, iou_predictions)``.
    - ``__call__``: both in a row (what ``init`` runs).

    Variables: ``params``, ``batch_stats`` (the encoder's BatchNorms) and ``constants`` (the
    prompt encoder's fixed positional-encoding matrix).
    """

    config: SamConfig = SamConfig()

    def setup(self) -> None:
        self.image_encoder = ImageEncoder(self.config)
        self.prompt_encoder = PromptEncoder(self.config)
        self.mask_decoder = MaskDecoder(self.config)

    def embed_images(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Image embeddings ``[B, 256, 64, 64]`` (NCHW) or ``[B, 64, 64, 256]`` (NHWC), in the
        compute dtype.

        Args:
          images: ``[B, 3, S, S]`` (or NHWC) normalised and padded as MIT's predictor does
            (resized so that the longer side is ``config.image_size``, ImageNet mean/std,
            zero-padded at the bottom and right); S divisible by the backbone's reduction.
          train: BatchNorm batch statistics (and ``batch_stats`` updated).
        """
        return from_nhwc(self.image_encoder(images, train=train), self.config)

    def decode(
        self,
        embeddings: jax.Array,
        coords: jax.Array,
        labels: jax.Array,
        mask_input: jax.Array,
        has_mask_input: jax.Array,
        multimask_output: bool | None = True,
    ) -> tuple[jax.Array, jax.Array]:
        """Low-resolution mask logits and IoU predictions of P prompts, float32.

        Args:
          embeddings: ``embed_images``' output for 1 image (broadcast over the prompts) or P.
          coords: ``[P, N, 2]`` float (x, y) in the prompt frame: pixels of the image resized
            so that its longer side is ``config.prompt_size`` (SAM's ``apply_coords``).
          labels: ``[P, N]`` int: 1 positive, 0 negative, -1 SAM's "not a point" pad (SAM
            appends one at (0, 0) to a prompt without box), 2 and 3 a box's top-left and
            bottom-right corners (points first, then the box, as SAM orders them),
            ``ABSENT_LABEL`` (-2) no token at all: masked out of every attention.
          mask_input: ``[P, 1, 256, 256]`` (NCHW) or ``[P, 256, 256, 1]``: a previous
            low-resolution logit mask per prompt.
          has_mask_input: ``[P]`` float: 1 where ``mask_input`` is given, 0 where it is
            ignored (SAM's ``no_mask_embed`` instead).
          multimask_output: static. True: SAM's three masks (its slice ``[1:]``); False: its
            single mask (``[0:1]``); None: all four, the single one first (fine-tuning:
            ``training.sam_loss``).

        Returns:
          ``(low_res_logits, iou_predictions)``: ``[P, M, 256, 256]`` (NCHW) or
          ``[P, 256, 256, M]`` (NHWC), and ``[P, M]``; M = 3, 1 or 4.
        """
        cfg = self.config
        check_prompts(
            cfg,
            embeddings.shape,
            coords.shape,
            labels.shape,
            mask_input.shape,
            has_mask_input.shape,
        )
        sparse, dense_prompt, image_pe = self.prompt_encoder(
            coords, labels, to_nhwc(mask_input, cfg), has_mask_input
        )
        return self.mask_decoder(
            to_nhwc(embeddings, cfg),
            image_pe,
            sparse,
            dense_prompt,
            labels != ABSENT_LABEL,
            multimask_output,
        )

    def __call__(
        self,
        images: jax.Array,
        coords: jax.Array,
        labels: jax.Array,
        mask_input: jax.Array,
        has_mask_input: jax.Array,
        *,
        multimask_output: bool = True,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """``decode(embed_images(images), ...)``: one image's embedding per prompt batch (a
        batch of B images needs P = B prompts, or a single image)."""
        embeddings = self.embed_images(images, train=train)
        return self.decode(embeddings, coords, labels, mask_input, has_mask_input, multimask_output)


def check_prompts(
    cfg: SamConfig,
    embeddings: tuple[int, ...],
    coords: tuple[int, ...],
    labels: tuple[int, ...],
    mask_input: tuple[int, ...],
    has_mask_input: tuple[int, ...],
) -> None:
    """Raise one ``ValueError`` naming the shapes unless they are those ``decode`` takes."""
    s, c, m = cfg.embed_size, cfg.embed_dim, cfg.mask_size
    nchw = cfg.data_format == "NCHW"
    emb_tail = (c, s, s) if nchw else (s, s, c)
    mask_tail = (1, m, m) if nchw else (m, m, 1)
    p = coords[0] if len(coords) == 3 else None
    ok = (
        len(coords) == 3
        and coords[2] == 2
        and tuple(labels) == tuple(coords[:2])
        and len(embeddings) == 4
        and embeddings[0] in (1, p)
        and tuple(embeddings[1:]) == emb_tail
        and tuple(mask_input) == (p, *mask_tail)
        and tuple(has_mask_input) == (p,)
    )
    if not ok:
        raise ValueError(
            f"decode ({cfg.data_format}) expects embeddings [1 or P, {', '.join(map(str, emb_tail))}], "
            f"coords [P, N, 2], labels [P, N], mask_input [P, {', '.join(map(str, mask_tail))}], "
            f"has_mask_input [P]; got embeddings {tuple(embeddings)}, coords {tuple(coords)}, "
            f"labels {tuple(labels)}, mask_input {tuple(mask_input)}, "
            f"has_mask_input {tuple(has_mask_input)}"
        )
