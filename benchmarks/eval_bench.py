"""End-to-end ``eval`` throughput (decode, preprocess, model) against timm's validate-style loop.

    python benchmarks/eval_bench.py [--images 256] [--models efficientvit_b0,efficientvit_m0]
        [--batch-size 32] [--workers 2] [--json out.json]

Makes a folder of JPEG photographs (crops, flips and rescalings of scikit-learn's two sample
photos, 300-500 px like ImageNet's validation images), converts a randomly initialised timm
model, then times, on the same folder and the same number of workers:
  - ours: ``efficientvit_jax.inference.evaluate_folder`` over a ``data.ImageLoader``
    (threads), what ``efficientvit-jax eval`` runs;
  - timm: a torch ``DataLoader`` (worker processes) with timm's eval transform, the model in
    eval mode under ``torch.no_grad``, top-1/top-5 as timm's ``validate.py`` counts them,
    in a process of its own (see ``torch_worker.py`` for why).
Each side runs once to warm up (compilation, file cache), then is timed; the table reports
images per second, the ratio, and the share of our wall time spent waiting for data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np


def make_folder(root: str, n: int, seed: int = 0) -> str:
    """``n`` JPEGs in 10 synset class folders, from the two sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from efficientvit_jax.data import imagenet

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    for i in range(n):
        img = photos[i % 2]
        w, h = img.size
        x0, y0 = rng.integers(0, w // 4), rng.integers(0, h // 4)
        crop = img.crop((x0, y0, x0 + w // 2 + rng.integers(0, w // 4), y0 + h // 2 + h // 4))
        side = int(rng.integers(300, 500))
        crop = crop.resize(
            (side, int(side * crop.size[1] / crop.size[0])), Image.Resampling.BILINEAR
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        d = os.path.join(root, imagenet.synsets()[i % 10])
        os.makedirs(d, exist_ok=True)
        crop.save(os.path.join(d, f"{i:05d}.JPEG"), quality=90)
    return root


def timm_side(args: argparse.Namespace) -> dict[str, Any]:
    """Run in a fresh process: timm's validate-style loop, one warm-up pass, one timed."""
    import timm
    import timm.data
    import torch
    import torchvision.datasets as tvd

    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model, pretrained=False).eval()
    model.load_state_dict(torch.load(args.weights_pt, weights_only=True))
    cfg = timm.data.resolve_data_config({}, model=model)
    ds = tvd.ImageFolder(args.data, transform=timm.data.create_transform(**cfg))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.workers, shuffle=False
    )

    def one_pass() -> tuple[float, int, int]:
        t0, n, correct = time.perf_counter(), 0, 0
        with torch.no_grad():
            for x, y in loader:
                out = model(x)
                correct += int((out.argmax(-1) == y).sum())
                n += len(y)
        return time.perf_counter() - t0, n, correct

    one_pass()
    wall, n, _ = one_pass()
    return {"images_per_second": n / wall, "count": n, "wall_s": wall}


def ours(args: argparse.Namespace, weights: str) -> dict[str, Any]:
    from efficientvit_jax.data import create_transform, resolve_data_config
    from efficientvit_jax.data.folders import scan_folder
    from efficientvit_jax.data.loader import ImageLoader
    from efficientvit_jax.inference import Classifier, evaluate_folder, load_pretrained

    model, variables = load_pretrained(args.model, weights)
    clf = Classifier(model, variables, args.batch_size)
    t = create_transform(resolve_data_config(args.model))
    folder = scan_folder(args.data)
    loader = ImageLoader(folder.samples, t, args.batch_size, workers=args.workers)
    evaluate_folder(clf, loader, clf.num_classes)  # warm-up: compilation, file cache
    r = evaluate_folder(clf, loader, clf.num_classes)
    return {k: r[k] for k in ("images_per_second", "count", "data_wait_fraction")}


def bench_model(args: argparse.Namespace, model: str, tmp: str) -> dict[str, Any]:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tm = timm.create_model(model, pretrained=False).eval()
    st, pt = os.path.join(tmp, f"{model}.safetensors"), os.path.join(tmp, f"{model}.pt")
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, st)
    torch.save(tm.state_dict(), pt)
    cmd = [sys.executable, __file__, "--timm-side", "--model", model, "--weights-pt", pt]
    cmd += ["--data", args.data, "--batch-size", str(args.batch_size)]
    cmd += ["--workers", str(args.workers), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    mine = ours(argparse.Namespace(**{**vars(args), "model": model}), st)
    return {
        "model": model,
        "jax_images_per_second": mine["images_per_second"],
        "timm_images_per_second": theirs["images_per_second"],
        "ratio": mine["images_per_second"] / theirs["images_per_second"],
        "jax_data_wait_fraction": mine["data_wait_fraction"],
        "count": mine["count"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--models", default="efficientvit_b0,efficientvit_m0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", default=None)
    p.add_argument("--timm-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--weights-pt", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timm_side:
        print(json.dumps(timm_side(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        args.data = make_folder(os.path.join(tmp, "val"), args.images)
        rows = [bench_model(args, m, tmp) for m in args.models.split(",")]
    print("| model | images | JAX img/s | timm img/s | JAX / timm | JAX waiting for data |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['count']} | {r['jax_images_per_second']:.1f} | "
            f"{r['timm_images_per_second']:.1f} | {r['ratio']:.2f} | "
            f"{r['jax_data_wait_fraction']:.0%} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
