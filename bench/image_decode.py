"""Benchmark: image decode + preprocess throughput with decode threads vs without.

On a GPU a large image encoder (CLIP ViT-L/14, about 780 images/s on an
A100) waits for the CPU to decode and preprocess its inputs; the extraction
stage can decode a batch's images in threads (``features.image.decode_workers``).
This times the stage's own batch function with a trivial forward (a mean over
pixels, so the decode is all that is measured) on 1000x1000 JPEGs, for
``decode_workers`` 0 (the extraction thread) and 1, 2, ... up to the CPU
count, and prints images/s and the ratio to 0. Median of ``--repeats`` runs.

    PYTHONPATH=workflow/scripts .venv/bin/python bench/image_decode.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from pmsid.features import image as image_features


def write_jpegs(folder: Path, n: int, size: int = 1000) -> list[str]:
    """``n`` varied size x size JPEGs (crops of two sample photos)."""
    sources = [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut())]
    paths = []
    for i in range(n):
        img = sources[i % 2].rotate(i % 360).resize((size, size))
        path = folder / f"{i}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(str(path))
    return paths


def decode_rate(paths: list[str], encoder, workers: int, batch_size: int) -> float:
    forward = lambda x: x.mean(dim=(2, 3))  # noqa: E731 - the decode is what is timed
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) if workers else contextlib.nullcontext() as pool:
        run = image_features._batch_forward(paths, encoder, forward, pool)
        for first in range(0, len(paths), batch_size):
            run(np.arange(first, min(first + batch_size, len(paths))))
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    print(
        f"{platform.processor() or platform.machine()}; os.cpu_count() {cpus}; torch threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}"
    )
    encoder = image_features.load_image_encoder("open_clip", "ViT-B-32", "random", "cpu")  # its transform only
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        counts = [0] + [w for w in (1, 2, 4, 8) if w <= cpus]
        rates = {w: [] for w in counts}
        for _ in range(args.repeats):
            for w in counts:  # interleaved, so load drift hits every setting alike
                rates[w].append(decode_rate(paths, encoder, w, args.batch_size))
    base = statistics.median(rates[0])
    print(
        f"\n{args.images} JPEGs 1000x1000 -> 224x224 (open-clip preprocessing), batch {args.batch_size}, "
        f"median of {args.repeats}"
    )
    print("| decode_workers | images/s | ratio to 0 |\n|---|---|---|")
    for w in counts:
        rate = statistics.median(rates[w])
        print(f"| {w} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
