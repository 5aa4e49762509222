"""Benchmark: items/s of the feature-extraction stages against the bare encoder call.

For each default encoder the same items are encoded by

- ``raw``: the plain library call a user would write: ``SentenceTransformer.encode(texts, batch_size)``
  for MiniLM; for SmolLM2 a transformers loop (tokenize, forward, masked mean of the last hidden
  state) in input order; for the image encoders load + preprocess + forward per batch;
- ``pipeline``: the stage entry point (:func:`run_text_features` / :func:`run_image_features`),
  which adds length sorting, OOM guard, resumable chunks on disk and the Parquet write,

with the already loaded model (load times are printed apart). Raw and pipeline runs alternate,
``--repeats`` times each, and the table shows the medians and the ratio of pipeline time to raw
time, plus the largest difference between the two results. Encoders: text MiniLM (bundled),
text causal_lm SmolLM2-135M (bundled GGUF), image efficientnet_lite0 (bundled), image open-clip
ViT-B-32 with random weights (no CLIP weights ship in any package). Texts are the ml-100k items
(RecBole's copy, 5-core); images are the scikit-learn / scikit-image sample photos, cropped and
resized to varied sizes, written to a temporary folder.

    PYTHONPATH=workflow/scripts .venv/bin/python bench/extract_throughput.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here ships in packages
os.environ.setdefault("TQDM_DISABLE", "1")  # the log lines below say enough

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pmsid.data.contracts import read_features
from pmsid.features.image import _load_or_fail, load_image_encoder, run_image_features
from pmsid.features.text import build_text_encoder, pool_hidden_states, run_text_features


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of raw and of pipeline per encoder")
    parser.add_argument("--n-slow", type=int, default=512, help="items for SmolLM2 and the image encoders")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    return parser.parse_args()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ml100k_items() -> pd.DataFrame:
    import recbole

    from pmsid.data.ml100k import read_ml100k
    from pmsid.data.protocol import build_dataset

    raw_inter, raw_items = read_ml100k(Path(recbole.__file__).parent / "dataset_example" / "ml-100k")
    items, _, _, _ = build_dataset(raw_inter, raw_items, text_fields=["title", "year", "genres"], min_interactions=5)
    return items


def sample_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` crops of the sample photos, 64 to 800 px a side, as JPEG and PNG."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), skdata.chelsea(), skdata.astronaut()]
    photos += [skdata.coffee(), skdata.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
        crop = Image.fromarray(photo[y : y + int(h * 0.6), x : x + int(w * 0.6)])
        crop = crop.resize((int(rng.integers(64, 800)), int(rng.integers(64, 800))))
        path = folder / f"{i:05d}.{'png' if i % 4 == 0 else 'jpg'}"
        crop.save(path)
        paths.append(str(path))
    return paths


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(name: str, n: int, raw, pipeline, out: Path, repeats: int) -> dict:
    """Alternate raw and pipeline runs; medians, ratio, and the largest difference of the results."""
    raw_s, pipe_s = [], []
    for rep in range(repeats):
        for kind in ("raw", "pipeline") if rep % 2 == 0 else ("pipeline", "raw"):
            if kind == "raw":
                seconds, raw_matrix = timed(raw)
                raw_s.append(seconds)
            else:
                seconds, _ = timed(pipeline)
                pipe_s.append(seconds)
            log(f"  {name} {kind} run {rep + 1}/{repeats}: {seconds:.1f} s ({n / seconds:.1f} items/s)")
    diff = float(np.abs(read_features(out)[1] - raw_matrix).max())
    raw_med, pipe_med = statistics.median(raw_s), statistics.median(pipe_s)
    return {
        "encoder": name,
        "n items": n,
        "raw items/s": round(n / raw_med, 1),
        "pipeline items/s": round(n / pipe_med, 1),
        "overhead (pipeline/raw time)": round(pipe_med / raw_med, 3),
        "max |pipeline - raw|": f"{diff:.1e}",
    }


def raw_causal_lm(encoder, texts: list[str], batch_size: int) -> np.ndarray:
    """The plain transformers loop: input order, tokenize, forward, masked mean."""
    tok, net, out = encoder.tokenizer, encoder.net, []
    for start in range(0, len(texts), batch_size):
        batch = tok(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = net(**batch).last_hidden_state
        out.append(pool_hidden_states(hidden, batch["attention_mask"], "mean").numpy())
    return np.concatenate(out)


def raw_images(encoder, paths: list[str], batch_size: int) -> np.ndarray:
    """Load, preprocess and forward each batch, nothing else."""
    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([encoder.transform(_load_or_fail(p)) for p in paths[start : start + batch_size]])
        with torch.inference_mode():
            if encoder.backend == "timm":
                feats = encoder.model.forward_head(encoder.model.forward_features(batch), pre_logits=True)
            else:
                feats = encoder.model.encode_image(batch)
        out.append(feats.float().numpy())
    return np.concatenate(out)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    machine = (
        f"{cpu}; os.cpu_count() {os.cpu_count()}; torch threads {torch.get_num_threads()}; torch {torch.__version__}; "
        f"python {platform.python_version()}; device cpu"
    )
    log(machine)
    total = time.perf_counter()
    items = ml100k_items()
    texts = items["text"].tolist()
    slow = items.iloc[: args.n_slow].reset_index(drop=True)
    log(f"ml-100k: {len(items)} items; {len(slow)} for the slow encoders")
    rows, loads = [], {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        # Text: all-MiniLM-L6-v2, batch 64 (the default config).
        seconds, minilm = timed(lambda: build_text_encoder({"model": "bundled:all-MiniLM-L6-v2"}, "cpu"))
        loads["text MiniLM-L6 (bundled)"] = seconds
        minilm.encode(texts[:64])  # warm-up
        out = tmp / "minilm.parquet"
        rows.append(
            compare(
                "text MiniLM-L6 (bundled)",
                len(items),
                lambda: minilm.net.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False),
                lambda: run_text_features(items, out, {"batch_size": 64}, "cpu", minilm),
                out,
                args.repeats,
            )
        )

        # Text: SmolLM2-135M (Llama architecture, GGUF), mean pooling, batch 64.
        cfg = {"backend": "causal_lm", "model": "bundled:SmolLM2-135M", "batch_size": 64}
        seconds, smol = timed(lambda: build_text_encoder(cfg, "cpu"))
        loads["text SmolLM2-135M causal_lm (bundled GGUF)"] = seconds
        smol.encode(texts[:8])
        out = tmp / "smol.parquet"
        slow_texts = slow["text"].tolist()
        rows.append(
            compare(
                "text SmolLM2-135M causal_lm (bundled GGUF)",
                len(slow),
                lambda: raw_causal_lm(smol, slow_texts, 64),
                lambda: run_text_features(slow, out, cfg, "cpu", smol),
                out,
                args.repeats,
            )
        )

        log(f"writing {len(slow)} sample images")
        folder = tmp / "images"
        folder.mkdir()
        paths = sample_images(folder, len(slow))
        images = pd.DataFrame({"item_idx": slow["item_idx"], "path": paths, "status": "ok"})

        for name, backend, model, checkpoint in (
            ("image efficientnet_lite0 (bundled)", "timm", "efficientnet_lite0", "bundled"),
            ("image open-clip ViT-B-32 (random init)", "open_clip", "ViT-B-32", "random"),
        ):
            seconds, encoder = timed(lambda: load_image_encoder(backend, model, checkpoint, "cpu"))  # noqa: B023 (called within the iteration)
            loads[name] = seconds
            raw_images(encoder, paths[:4], 4)  # warm-up
            out = tmp / f"{backend}.parquet"
            image_cfg = {"backend": backend, "model": model, "checkpoint": checkpoint, "batch_size": 32}
            rows.append(
                compare(
                    name,
                    len(slow),
                    lambda: raw_images(encoder, paths, 32),  # noqa: B023 (called within the iteration)
                    lambda: run_image_features(slow, images, out, image_cfg, "cpu", encoder),  # noqa: B023 (called within the iteration)
                    out,
                    args.repeats,
                )
            )

    table = pd.DataFrame(rows)
    print()
    print(f"Machine: {machine}")
    print(f"Median of {args.repeats} alternating runs each; batch 64 (text) / 32 (image); model already loaded.")
    print(table.to_markdown(index=False))
    print()
    print(pd.Series(loads, name="load s").round(1).to_frame().to_markdown())
    log(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
