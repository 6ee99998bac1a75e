"""Image files made from scikit-learn's two sample photographs (no download): real photos and
the odd files a loader meets (grey, palette, RGBA, CMYK, tiny, very tall, very wide)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # china.jpg, flower.jpg: 427x640x3 uint8


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: Any, photos: list[np.ndarray]) -> dict[str, str]:
    """``{kind: path}`` of image files of every kind the transforms must handle."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    china, flower = (Image.fromarray(p) for p in photos)
    files = {
        "photo_jpeg": (china, "china.jpg"),
        "photo_png": (flower, "flower.png"),
        "grey": (flower.convert("L"), "grey.png"),
        "palette": (china.convert("P"), "palette.png"),
        "rgba": (flower.convert("RGBA"), "rgba.png"),
        "cmyk": (china.convert("CMYK"), "cmyk.jpg"),
        "tiny": (flower.resize((37, 23)), "tiny.png"),  # smaller than every crop
        "tall": (china.crop((300, 0, 340, 427)), "tall.png"),  # 40 x 427
        "wide": (flower.crop((0, 200, 640, 230)), "wide.jpg"),  # 640 x 30
    }
    out = {}
    for kind, (img, name) in files.items():
        img.save(d / name)
        out[kind] = str(d / name)
    return out


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: Any, image_files: dict[str, str]) -> dict[str, str]:
    """A text file with an image's name, and a JPEG cut in half."""
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.jpg"
    text.write_text("not an image")
    with open(image_files["photo_jpeg"], "rb") as f:
        data = f.read()
    cut = d / "truncated.jpg"
    cut.write_bytes(data[: len(data) // 2])
    return {"text": str(text), "truncated": str(cut)}


def _make_class_tree(root: str, classes: dict[str, list[str]]) -> str:
    import shutil

    for cls, files in classes.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i, f in enumerate(files):
            shutil.copy(f, os.path.join(root, cls, f"{i}{os.path.splitext(f)[1]}"))
    return root


@pytest.fixture(scope="session")
def make_class_tree() -> Any:
    """``(root, {class: [files]}) -> root``: ``root/<class>/<i>.<ext>`` copies of the files."""
    return _make_class_tree
