"""Named variants with timm's names: ``create_model``, ``list_models``, ``load_timm_weights``.

Each family module (``mit``, ``msra``) registers its variants here when it is
imported; ``efficientvit_jax.zoo`` imports them all.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from efficientvit_jax.data import tags as _tags
from efficientvit_jax.zoo.convert import ConversionError, StateDict, load_state_dict


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered variant.

    Attributes:
      name: timm's model name, e.g. ``"efficientvit_b1"``.
      family: ``"mit"`` or ``"msra"``.
      config: the variant's frozen config dataclass.
      module: ``config -> nn.Module``.
      convert: ``(state_dict, config) -> variables`` (``{"params", "batch_stats"}``),
        raising one ``ValueError`` naming every mismatching tensor.
      top1: published ImageNet-1k top-1 (%) of the timm weights at their default resolution.
      top1_source: where that number is quoted from.
    """

    name: str
    family: str
    config: Any
    module: Callable[[Any], nn.Module]
    convert: Callable[[dict[str, Any], Any], dict[str, Any]]
    top1: float | None = None
    top1_source: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a variant (a name can be registered once)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Registered names matching a shell-style pattern, sorted; with ``pretrained=True`` the
    pretrained tags instead (``"efficientvit_b1.r288_in1k"``, ...), in timm's order."""
    if pretrained:
        return [t for t in _tags.list_tags(pattern) if _tags.split_name(t)[0] in _REGISTRY]
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry of a model name or tag; an unknown one lists the known ones."""
    model, tag = _tags.split_name(name)
    if model not in _REGISTRY:
        raise _tags.unknown_model(name, list_models())
    if tag is not None:
        _tags.get_tag(name)  # an unknown tag lists the model's tags
    return _REGISTRY[model]


def get_config(name: str, **overrides: Any) -> Any:
    """The variant's config, with fields replaced (e.g. ``num_classes=10``).

    A tag (``"efficientvit_m0.r224_in1k"``) sets the input size the architecture depends
    on, where it depends on one (MSRA's attention-bias tables: ``img_size``).
    """
    cfg = get_entry(name).config
    if _tags.split_name(name)[1] is not None and hasattr(cfg, "img_size"):
        cfg = dataclasses.replace(cfg, img_size=_tags.get_tag(name).image_size)
    if overrides:
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {name!r}; its options: {', '.join(sorted(fields))}"
            )
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def create_model(name: str, *, pretrained: bool = False, **overrides: Any) -> Any:
    """A Flax module for a timm-named variant or pretrained tag, e.g.
    ``create_model("efficientvit_b1.r288_in1k")`` or ``create_model("efficientvit_b1",
    num_classes=10)``.

    With ``pretrained=True``, ``(module, variables)``: the tag's published weights (a bare
    name: its first tag), fetched from the Hugging Face Hub into its cache on first use
    (``load_pretrained``)."""
    module = get_entry(name).module(get_config(name, **overrides))
    if not pretrained:
        return module
    return module, load_pretrained(name, **overrides)


def load_timm_weights(source: str | StateDict, name: str, **overrides: Any) -> dict[str, Any]:
    """Flax variables (``params`` and ``batch_stats``) from a timm checkpoint of ``name``.

    ``source`` is a ``.safetensors`` file, a PyTorch zip checkpoint (read with
    ``weights_only=True``) or an in-memory state dict. A checkpoint of another
    variant or with another ``num_classes`` is refused with every mismatching
    tensor named. Nothing is downloaded.
    """
    entry = get_entry(name)
    return entry.convert(load_state_dict(source), get_config(name, **overrides))


def load_timm_backbone(
    source: str | StateDict, name: str, **overrides: Any
) -> tuple[dict[str, Any], list[str]]:
    """Variables of ``name`` from a timm checkpoint whatever its classifier's size, for
    fine-tuning: ``(variables, dropped)`` where ``dropped`` names the checkpoint tensors that
    were left out (its classifier, when that does not fit ``overrides``' ``num_classes``).

    The checkpoint is first converted as it is; where only the classifier does not fit, it is
    converted as the model without classifier (``num_classes=0``). Anything else (a checkpoint
    of another variant or family) raises the ``ConversionError`` naming every tensor.
    """
    entry = get_entry(name)
    sd = load_state_dict(source)
    try:
        return entry.convert(sd, get_config(name, **overrides)), []
    except ConversionError:
        pass
    headless = get_config(name, **{**overrides, "num_classes": 0})
    try:
        return entry.convert(sd, headless), []
    except ConversionError as e:
        if any(kind != "unexpected" for kind, _ in e.problems):
            raise
        dropped = [k for _, k in e.problems]
    kept = {k: v for k, v in sd.items() if k not in set(dropped)}
    return entry.convert(kept, headless), dropped


def load_pretrained(name: str, **overrides: Any) -> dict[str, Any]:
    """The Flax variables (``params``, ``batch_stats``) of tag ``name``'s published weights,
    fetched with ``fetch_weights`` and converted as ``load_timm_weights`` converts a file.
    ``overrides``: config fields, as for ``create_model`` (``num_classes`` must be the
    checkpoint's)."""
    from efficientvit_jax.zoo.hub import fetch_weights, hub_file

    path = fetch_weights(name)
    repo, filename = hub_file(name)
    try:
        return load_timm_weights(path, name, **overrides)
    except ValueError as e:
        # A broken or foreign file in the cache stays there: say which it is and where.
        raise ValueError(f"{name}: {repo} {filename} (cached at {path}): {e}") from None
