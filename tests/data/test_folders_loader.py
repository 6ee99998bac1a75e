"""Class-folder trees and the threaded loader: labels, padding and masks, bad files."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from efficientvit_jax.data import folders, imagenet
from efficientvit_jax.data.folders import scan_folder
from efficientvit_jax.data.loader import ImageLoader


def test_imagenet_class_names_are_in_index_order() -> None:
    s, n = imagenet.synsets(), imagenet.class_names()
    assert len(s) == len(set(s)) == len(n) == 1000
    # Well-known indices of the ImageNet-1k head (timm/torchvision order).
    assert (s[0], n[0]) == ("n01440764", "tench, Tinca tinca")
    assert n[207].startswith("golden retriever") and n[999].startswith("toilet tissue")
    assert imagenet.synset_index()["n01443537"] == 1


def test_synset_folders_take_imagenet_indices(
    tmp_path: Any, image_files: dict, make_class_tree: Any
) -> None:
    root = make_class_tree(str(tmp_path), {
        "n02099601": [image_files["photo_jpeg"]],  # golden retriever: 207
        "n01440764": [image_files["grey"], image_files["cmyk"]],  # tench: 0
    })  # fmt: skip
    f = scan_folder(root)
    assert f.imagenet and f.num_classes == 1000
    assert f.classes == ("n01440764", "n02099601") and f.class_indices == (0, 207)
    assert sorted(label for _, label in f.samples) == [0, 0, 207]


def test_other_names_are_sorted_classes(
    tmp_path: Any, image_files: dict, make_class_tree: Any
) -> None:
    root = make_class_tree(str(tmp_path), {
        "dogs": [image_files["photo_jpeg"]], "cats": [image_files["grey"]],
        "birds": [image_files["rgba"], image_files["tall"]],
    })  # fmt: skip
    (tmp_path / "cats" / "readme.txt").write_text("ignored: not an image extension")
    f = scan_folder(root)
    assert not f.imagenet and f.classes == ("birds", "cats", "dogs") and f.num_classes == 3
    assert [(os.path.basename(p), y) for p, y in f.samples] == [
        ("0.png", 0), ("1.png", 0), ("0.png", 1), ("0.jpg", 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist or is not a folder"),
        ("empty", "has nothing: no class subfolders"),
        ("loose", "has 1 image file(s) but no class subfolders"),
        ("empty_class", "class folder(s) with no image files (.jpg/"),
    ],
)
def test_folder_errors(
    tmp_path: Any, image_files: dict, make_class_tree: Any, layout: str, message: str
) -> None:
    root = tmp_path / "d"
    if layout != "missing":
        root.mkdir()
    if layout == "loose":
        make_class_tree(str(tmp_path), {"d": [image_files["photo_jpeg"]]})
    if layout == "empty_class":
        make_class_tree(str(root), {"a": [image_files["photo_jpeg"]]})
        (root / "b").mkdir()
    with pytest.raises(ValueError) as e:
        scan_folder(root)
    assert message in str(e.value) and "\n" not in str(e.value)
    if layout == "empty_class":
        assert str(e.value).endswith(": b")


def test_a_split_dataset_is_not_a_class_tree(
    tmp_path: Any, image_files: dict, make_class_tree: Any
) -> None:
    for split in ("train", "val"):
        make_class_tree(str(tmp_path / split), {"a": [image_files["grey"]]})
    with pytest.raises(ValueError) as e:
        scan_folder(tmp_path)
    assert str(e.value) == (
        f"--data {tmp_path} holds train/ and val/, not class folders: pass {tmp_path}/val to eval"
    )
    with pytest.raises(ValueError, match=r"holds train/ and val/, not class folders: my advice$"):
        scan_folder(tmp_path, split_hint="my advice")


def test_image_files_expands_folders(tmp_path: Any) -> None:
    for name in ("b/2.png", "b/c/1.JPG", "a.jpg", "b/notes.txt", "b/.hidden.png", "file.dat"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).touch()
    found = folders.image_files([str(tmp_path / "file.dat"), str(tmp_path / "b")])
    # a named file is taken whatever its extension; a folder's images sorted, below included
    assert [os.path.relpath(p, tmp_path) for p in found] == ["file.dat", "b/2.png", "b/c/1.JPG"]
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"^image folder \S+none holds no image files \(.jpg/"):
        folders.image_files([str(tmp_path / "a.jpg"), str(tmp_path / "none")])
    with pytest.raises(ValueError, match=r"^image nope\.png: no such file or folder$"):
        folders.image_files(["nope.png"])


def _identity(path: str) -> np.ndarray:
    """A 'transform' that encodes which file it read, to check order and padding."""
    return np.full((2, 2, 1), float(os.path.basename(path).split(".")[0]), np.float32)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_padded_masked_and_in_order(workers: int) -> None:
    samples = [(f"{i}.png", i % 3) for i in range(10)]
    loader = ImageLoader(samples, _identity, 4, workers=workers, prefetch=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert all(b.images.shape == (4, 2, 2, 1) for b in batches)
    mask = np.concatenate([b.mask for b in batches])
    np.testing.assert_array_equal(mask, [True] * 10 + [False] * 2)
    values = np.concatenate([b.images[:, 0, 0, 0] for b in batches])[mask]
    np.testing.assert_array_equal(values, np.arange(10))
    labels = np.concatenate([b.labels for b in batches])[mask]
    np.testing.assert_array_equal(labels, np.arange(10) % 3)
    assert batches[-1].paths == ["8.png", "9.png"]


def test_both_pipelines_give_a_step_the_same_dtypes() -> None:
    """The in-memory batches (``training.iterate_batches``) and the file loader's have the same
    keys, shapes and dtypes, so a model trained on arrays and on files runs one compiled step
    (before: a float32 mask against a bool one, two train-step programs for one model)."""
    from efficientvit_jax.training import iterate_batches

    samples = [(f"{i}.png", i % 3) for i in range(5)]
    files = [b.arrays() for b in ImageLoader(samples, _identity, 4, workers=0)]
    images = np.stack([_identity(p) for p, _ in samples])
    labels = np.array([c for _, c in samples])
    arrays = list(iterate_batches(images, labels, 4, shuffle=False, remainder="pad"))

    def spec(b):
        return {k: (v.shape, v.dtype) for k, v in b.items()}

    assert [spec(b) for b in arrays] == [spec(b) for b in files]
    assert files[0]["mask"].dtype == bool
    np.testing.assert_array_equal(arrays[-1]["mask"], files[-1]["mask"])


def test_bad_files_raise_or_are_skipped(image_files: dict, bad_files: dict) -> None:
    from efficientvit_jax.data import create_transform, resolve_data_config

    t = create_transform(resolve_data_config("efficientvit_b0", input_size=32))
    good = [image_files["photo_jpeg"], image_files["grey"]]
    samples = [(good[0], 0), (bad_files["truncated"], 1), (good[1], 2), (bad_files["text"], 3)]
    with pytest.raises(ValueError, match=r"cannot read image .*truncated\.jpg"):
        list(ImageLoader(samples, t, 3, workers=2))
    loader = ImageLoader(samples, t, 3, workers=2, skip_bad=True)
    batches = list(loader)
    assert [p for b in batches for p in b.paths] == good
    assert sum(int(b.mask.sum()) for b in batches) == 2
    assert [p for p, _ in loader.skipped] == [bad_files["truncated"], bad_files["text"]]
    assert np.concatenate([b.labels[b.mask] for b in batches]).tolist() == [0, 2]
