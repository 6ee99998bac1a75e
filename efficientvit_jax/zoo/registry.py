"""Named variants with timm's names: ``create_model``, ``list_models``, ``load_timm_weights``.

Each family package (``mit``, ``msra``) registers its variants here when it is
imported (its ``variants`` module); ``efficientvit_jax.zoo`` imports them all.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from efficientvit_jax.data import tags as _tags
from efficientvit_jax.zoo.base import current_names
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
      task: ``"classification"``, ``"segmentation"`` or ``"sam"`` (segment anything: masks
        from prompts; what the module's output is).
      mit_convert: ``(state_dict, config) -> variables`` for MIT's own checkpoint files
        (``load_mit_weights``), where the variant has them.
      dataset: the dataset a segmentation variant is trained on (``"cityscapes"``, ``"ade20k"``).
      miou: published validation mIoU (%) of MIT's checkpoint; miou_source: where it is quoted from.
      backbone: the classifier variant whose timm checkpoints fit a segmentation variant's backbone.
      hf_hub_id, hf_hub_filename: where MIT publishes the variant's own checkpoint on the
        Hugging Face Hub (read with ``mit_convert``); classifiers' weights are per tag, in
        ``data.tags``.
    """

    name: str
    family: str
    config: Any
    module: Callable[[Any], nn.Module]
    convert: Callable[[dict[str, Any], Any], dict[str, Any]]
    top1: float | None = None
    top1_source: str | None = None
    task: str = "classification"
    mit_convert: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    dataset: str | None = None
    miou: float | None = None
    miou_source: str | None = None
    backbone: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a variant (a name can be registered once).

    An entry without ``top1`` takes its default tag's from the tag table (``data.tags``,
    where every published top-1 figure is kept, with its source)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    if entry.top1 is None and entry.name in _tags.tagged_models():
        tag = _tags.get_tag(entry.name)
        entry = dataclasses.replace(entry, top1=tag.top1, top1_source=tag.top1_source)
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Registered names matching a shell-style pattern, sorted; with ``pretrained=True`` the
    pretrained tags instead (``"efficientvit_b1.r288_in1k"``, ...), in timm's order."""
    if pretrained:
        return [t for t in _tags.list_tags(pattern) if _tags.split_name(t)[0] in _REGISTRY]
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def canonical_name(name: str) -> str:
    """A registered name for MIT's hyphenated spelling (``"efficientvit-seg-b0-cityscapes"`` ->
    ``"efficientvit_seg_b0_cityscapes"``); any other name (or tag) as it is."""
    model, dot, tag = name.partition(".")
    if model not in _REGISTRY and model.replace("-", "_") in _REGISTRY:
        return model.replace("-", "_") + dot + tag
    return name


def get_entry(name: str) -> ModelEntry:
    """The registry entry of a model name or tag; an unknown one lists the known ones."""
    model, tag = _tags.split_name(canonical_name(name))
    if model not in _REGISTRY:
        raise _tags.unknown_model(name, list_models())
    if tag is not None:
        _tags.get_tag(name)  # an unknown tag lists the model's tags
    return _REGISTRY[model]


def get_config(name: str, **overrides: Any) -> Any:
    """The variant's config, with fields replaced (e.g. ``num_classes=10``).

    A tag (``"efficientvit_m0.r224_in1k"``) sets the input size the architecture depends
    on, where it depends on one (``image_size`` among the config's ``SHAPED_FIELDS``: MSRA's
    attention-bias tables). The options' old names (``in_chans``, ``img_size``) still work.
    """
    name = canonical_name(name)
    cfg = get_entry(name).config
    if _tags.split_name(name)[1] is not None and "image_size" in cfg.SHAPED_FIELDS:
        cfg = dataclasses.replace(cfg, image_size=_tags.get_tag(name).image_size)
    overrides = current_names(overrides)
    if overrides:
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {name!r}; its options: {', '.join(sorted(fields))}"
            )
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


# What each task's models are called in messages, and the command that serves them.
_TASKS = {
    "classification": ("a classifier", "predict"),
    "segmentation": ("a segmentation model", "segment"),
    "sam": ("a segment-anything model", "sam"),
}


def check_task(name: str, tasks: tuple[str, ...], command: str) -> ModelEntry:
    """``name``'s entry, if its task is one of ``tasks``; else one line for ``--model`` that
    says what the model is and which command takes it (``command``: the one refusing it)."""
    entry = get_entry(name)
    if entry.task not in tasks:
        what, serves = _TASKS.get(entry.task, (f"a {entry.task} model", None))
        takes = " or ".join(_TASKS[t][0].split(" ", 1)[1] + "s" for t in tasks)
        hint = f"; use `efficientvit-jax {serves}`" if serves else ""
        raise ValueError(f"--model {name} is {what}: `{command}` takes {takes}{hint}")
    return entry


def create_model(name: str, *, pretrained: bool = False, **overrides: Any) -> Any:
    """A Flax module for a timm-named variant or pretrained tag, e.g.
    ``create_model("efficientvit_b1.r288_in1k")`` or ``create_model("efficientvit_b1",
    num_classes=10)``.

    With ``pretrained=True``, ``(module, variables)``: the published weights (a classifier
    tag's timm file, a bare name's first tag; MIT's checkpoint of a segmentation or SAM
    variant), fetched from the Hugging Face Hub into its cache on first use
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


def load_mit_weights(source: str | StateDict, name: str, **overrides: Any) -> dict[str, Any]:
    """Flax variables (``params`` and ``batch_stats``) from one of MIT's checkpoints of ``name``.

    ``source``: a file mit-han-lab/efficientvit releases (a PyTorch zip ``.pt``, read with
    ``weights_only=True``, never unpickled; a top-level ``state_dict`` entry or a bare state
    dict), a ``.safetensors`` copy, or an in-memory state dict. ``name``: a registered name or
    MIT's (``"efficientvit-seg-b0-cityscapes"``). A checkpoint of another variant is refused
    with every mismatching tensor named. Nothing is downloaded.
    """
    entry = get_entry(name)
    if entry.mit_convert is None:
        have = ", ".join(n for n in list_models() if _REGISTRY[n].mit_convert is not None)
        raise ValueError(f"{entry.name}: no reader for MIT's checkpoints; models with one: {have}")
    return entry.mit_convert(load_state_dict(source), get_config(name, **overrides))


def load_timm_backbone(
    source: str | StateDict, name: str, **overrides: Any
) -> tuple[dict[str, Any], list[str]]:
    """Variables of ``name`` from a timm checkpoint whatever its classifier's size, for
    fine-tuning: ``(variables, dropped)`` where ``dropped`` names the checkpoint tensors that
    were left out (its classifier, when that does not fit ``overrides``' ``num_classes``).

    The checkpoint is first converted as it is. Where only the classifier does not fit, it is
    converted at its own class count and the classifier (the layer whose output width is that
    count: timm's ``head.linear`` or ``head.classifier.4``) is left out, so that everything
    timm's own ``pretrained=True, num_classes=n`` keeps is kept (the MSRA models' head
    BatchNorm too). Anything else (a checkpoint of another variant or family) raises the
    ``ConversionError`` naming every tensor.
    """
    entry = get_entry(name)
    sd = load_state_dict(source)
    try:
        return entry.convert(sd, get_config(name, **overrides)), []
    except ConversionError as e:
        misfit = [k for kind, k in e.problems if kind == "shape"]
        only_classifier = len(misfit) == len(e.problems) and _one_classifier(sd, misfit)
    # The usual fine-tuning case: only a classifier misfits; convert at the checkpoint's own
    # count at once (each conversion traces the model for its shapes: a second or two).
    if only_classifier and (found := _at_own_count(entry, sd, name, overrides, misfit)):
        return found
    headless = get_config(name, **{**overrides, "num_classes": 0})
    try:
        return entry.convert(sd, headless), []
    except ConversionError as e:
        if any(kind != "unexpected" for kind, _ in e.problems):
            raise
        head = [k for _, k in e.problems]
    if found := _at_own_count(entry, sd, name, overrides, head):
        return found
    kept = {k: v for k, v in sd.items() if k not in set(head)}
    return entry.convert(kept, headless), head


def _at_own_count(
    entry: Any, sd: StateDict, name: str, overrides: dict, head: list[str]
) -> tuple[dict[str, Any], list[str]] | None:
    """``sd`` converted at a class count of its head's matrices (``_class_counts``), the
    classifier left out, with the keys dropped; ``None`` where no count fits."""
    for k in _class_counts(sd, head):
        try:
            variables = entry.convert(sd, get_config(name, **{**overrides, "num_classes": k}))
        except ConversionError:
            continue
        return _without_classifier(variables, k), _classifier_keys(sd, head, k)
    return None


def _class_counts(sd: StateDict, head: list[str]) -> list[int]:
    """The candidate class counts of a checkpoint: the output widths of its head's matrices."""
    return sorted({int(sd[k].shape[0]) for k in head if len(sd[k].shape) == 2})


def _one_classifier(sd: StateDict, keys: list[str]) -> bool:
    """Whether ``keys`` are one classifier's tensors alone: one ``[k, in]`` matrix and
    vectors of the same ``k``."""
    widths = _class_counts(sd, keys)
    return len(widths) == 1 and all(sd[k].shape[:1] == (widths[0],) for k in keys)


def _classifier_keys(sd: StateDict, head: list[str], k: int) -> list[str]:
    """The tensors of the head's layers whose weight is a ``[k, in]`` matrix."""
    layers = {
        key.removesuffix(".weight")
        for key in head
        if key.endswith(".weight") and len(sd[key].shape) == 2 and sd[key].shape[0] == k
    }
    return sorted(key for key in head if key.rsplit(".", 1)[0] in layers)


def _without_classifier(variables: dict[str, Any], k: int) -> dict[str, Any]:
    """``variables`` less every module whose ``kernel`` is ``[in, k]`` (the classifier)."""

    def prune(tree: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        kernel = tree.get("kernel")
        if kernel is not None and len(kernel.shape) == 2 and kernel.shape[-1] == k:
            return None
        out = {name: prune(sub) for name, sub in tree.items()}
        return {name: sub for name, sub in out.items() if sub is not None}

    return {c: prune(dict(tree)) for c, tree in variables.items()}


def pretrained_file(name: str) -> tuple[str, str]:
    """``(repository, filename)`` on the Hugging Face Hub of ``name``'s published weights: a
    classifier tag's timm file (``data.tags``; a bare name: its first tag), or the file MIT
    publishes for a segmentation or SAM variant. ``ValueError`` where none is published."""
    from efficientvit_jax.zoo.hub import hub_file

    entry = get_entry(name)
    if entry.hf_hub_id is not None and entry.hf_hub_filename is not None:
        return entry.hf_hub_id, entry.hf_hub_filename
    return hub_file(name)


def fetch_pretrained(name: str) -> str:
    """The local path of ``name``'s published weights (``pretrained_file``): from
    ``huggingface_hub``'s cache, else downloaded into it. One-line ``ValueError``s."""
    from efficientvit_jax.zoo.hub import fetch_file

    return fetch_file(name, *pretrained_file(name))


def load_pretrained(name: str, **overrides: Any) -> dict[str, Any]:
    """The Flax variables (``params``, ``batch_stats``) of ``name``'s published weights,
    fetched with ``fetch_pretrained`` and converted as ``load_timm_weights`` (a classifier
    tag) or ``load_mit_weights`` (MIT's segmentation and SAM checkpoints) convert a file.
    ``overrides``: config fields, as for ``create_model`` (``num_classes`` must be the
    checkpoint's)."""
    entry = get_entry(name)
    repo, filename = pretrained_file(name)
    path = fetch_pretrained(name)
    load = load_mit_weights if entry.hf_hub_id is not None else load_timm_weights
    try:
        return load(path, name, **overrides)
    except ValueError as e:
        # A broken or foreign file in the cache stays there: say which it is and where.
        raise ValueError(f"{name}: {repo} {filename} (cached at {path}): {e}") from None
