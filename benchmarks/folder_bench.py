"""Folder training's input pipeline: the loader alone per augmentation level, and one epoch of
``efficientvit_b0`` at 224 from image files against the same steps on arrays in memory.

    python benchmarks/folder_bench.py [--images 256] [--batch-size 32] [--json out.json]

The folder is made from scikit-learn's two sample photographs (``eval_bench.make_folder``:
JPEGs of 300-500 px in 10 classes). Measured:
  - loader images/s for ``--augment none|light|strong`` with the threads of ``data.pipeline``
    (2 workers), and for ``light`` with grain's ``DataLoader`` (2 worker processes) doing the
    same decoding and augmentation, for comparison;
  - one epoch of B0 train steps (AdamW, batch 32) fed by the pipeline with 0, 1 and 2 workers,
    against the same number of steps on batches already in memory. Every timed run follows an
    untimed one (compilation, file cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from eval_bench import make_folder


def _augment(level: str, classes: int) -> tuple[Any, Any]:
    from efficientvit_jax.data import resolve_data_config
    from efficientvit_jax.training.recipe import augmenter

    return augmenter(level, resolve_data_config("efficientvit_b0"), classes, "efficientvit_b0")


def _pipeline(samples: list, level: str, batch: int, workers: int) -> Any:
    from efficientvit_jax.data.pipeline import TrainPipeline

    aug, mix = _augment(level, 10)
    return TrainPipeline(samples, aug, batch, seed=0, workers=workers, mix=mix)


def loader_rate(samples: list, level: str, batch: int, workers: int) -> float:
    pipe = _pipeline(samples, level, batch, workers)
    list(pipe.epoch(0))  # warm the file cache
    t0 = time.perf_counter()
    n = sum(len(b["images"]) for b in pipe.epoch(1))
    return n / (time.perf_counter() - t0)


class _GrainAugment:
    """grain's MapTransform over (path, label) records: the same per-image work."""

    def __init__(self, level: str):
        self.level = level
        self.aug = None  # built in the worker process: closures do not pickle

    def __call__(self, record: tuple) -> dict:
        if self.aug is None:
            self.aug, _ = _augment(self.level, 10)
        aug = self.aug
        path, label = record
        idx = hash(path) % (2**31)
        x = aug(path, np.random.default_rng([0, 1, idx]))
        return {"images": x.transpose(2, 0, 1), "labels": np.int32(label)}


def grain_rate(samples: list, batch: int, workers: int) -> float | None:
    try:
        import grain.python as grain
        from absl import flags
    except ImportError:
        return None
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; this script has none of its own
        flags.FLAGS.mark_as_parsed()

    class Augment(grain.MapTransform):
        def __init__(self) -> None:
            self.fn = _GrainAugment("light")

        def map(self, record: tuple) -> dict:
            return self.fn(record)

    sampler = grain.IndexSampler(
        len(samples), grain.NoSharding(), shuffle=True, num_epochs=1, seed=0
    )
    loader = grain.DataLoader(
        data_source=samples, sampler=sampler, worker_count=workers,
        operations=[Augment(), grain.Batch(batch, drop_remainder=True)],
    )  # fmt: skip
    list(loader)  # start-up and file cache
    t0 = time.perf_counter()
    n = sum(len(b["images"]) for b in loader)
    return n / (time.perf_counter() - t0)


def epoch_times(samples: list, batch: int) -> dict[str, float]:
    import jax

    import efficientvit_jax as ev
    from efficientvit_jax.training import create_train_state, make_optimizer, make_train_step

    model = ev.create_model("efficientvit_b0", num_classes=10)
    pipe = _pipeline(samples, "light", batch, 2)
    in_memory = list(pipe.epoch(0))
    opt = make_optimizer(1e-3, total_steps=1000)
    state = create_train_state(model, opt, 0, in_memory[0]["images"])
    step = make_train_step(model, opt)

    def run(batches: Any) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for b in batches:
            state, m = step(state, b)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t0

    run(in_memory[:2])  # compile
    out = {"in_memory": run(in_memory)}
    for w in (0, 1, 2):
        p = _pipeline(samples, "light", batch, w)
        run(p.epoch(1))  # untimed: file cache, threads
        out[f"folder_workers_{w}"] = run(p.epoch(2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from efficientvit_jax.data.folders import scan_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = scan_folder(make_folder(os.path.join(tmp, "train"), args.images))
        samples = [(path, i % 10) for i, (path, _) in enumerate(folder.samples)]
        rates = {
            lvl: loader_rate(samples, lvl, args.batch_size, 2)
            for lvl in ("none", "light", "strong")
        }
        rates["light_grain_2_processes"] = grain_rate(samples, args.batch_size, 2)
        epochs = epoch_times(samples, args.batch_size)
    print("| loader (2 workers) | images/s |\n| --- | --- |")
    for k, v in rates.items():
        print(f"| {k} | {'n/a' if v is None else f'{v:.0f}'} |")
    base = epochs["in_memory"]
    print("\n| B0 epoch, batch 32 | seconds | vs in memory |\n| --- | --- | --- |")
    for k, v in epochs.items():
        print(f"| {k} | {v:.1f} | {v / base:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loader_images_per_second": rates, "epoch_seconds": epochs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
