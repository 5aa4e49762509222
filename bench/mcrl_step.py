"""Benchmark: wall seconds per MCRL training step, each ablation against the control mcrl_none.

Every ablation gets its own copy of a trained stage-1 generator (the
workflow's PMAT personalized generator of one dataset and seed) with MCRL's
heads and an AdamW optimizer. For each of ``--steps`` batches (prefixes of
the training sequences, drawn once with a fixed seed) every ablation takes
one optimizer step on the same batch, in a fresh random order per batch, so
that drifts in machine load fall on all ablations alike. A step is forward,
backward and optimizer update, timed with ``time.perf_counter``. Prints the
median seconds per step and the ratio to mcrl_none's median.

Needs a finished workflow run for the dataset and seed (``make run``)::

    make bench-mcrl                       # ml-100k, seed 0
    PYTHONPATH=workflow/scripts .venv/bin/python bench/mcrl_step.py --dataset synthetic
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pmsid.data.loaders import load_personalized, load_sequences
from pmsid.data.sequences import training_samples
from pmsid.methods.mcrl import ABLATIONS
from pmsid.methods.mcrl.joint import JointModel
from pmsid.methods.mcrl.train import JOINT_KEYS, read_labels, resolve_cfg
from pmsid.train.recipes import load_generator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=0, help="the workflow seed whose stage-1 generator is used")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per ablation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per ablation first")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--results", default="results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the training loop does
    config = yaml.safe_load(Path(args.config).read_text())
    modalities = config["dataset_specs"][args.dataset]["modalities"]
    cfg = resolve_cfg({k: v for k, v in config["mcrl"].items() if k not in ("datasets", "ablations", "id_space")})
    root, d, s = Path(args.results), args.dataset, args.seed
    init = root / "train" / d / "pmat_static" / f"seed{s}" / "model.pt"
    if not init.exists():
        raise SystemExit(f"{init} not found: run the workflow first (make run), or pick --dataset / --seed")

    seqs = load_sequences(root / "data" / d / "interactions.parquet", root / "data" / d / "items.parquet")
    tokens = root / "tokenize" / d / "pmat_personalized" / f"seed{s}"
    _, tables = load_personalized(tokens / "ids.parquet", tokens / "assignment.parquet", seqs)
    labels = read_labels({m: root / "pseudolabels" / d / f"seed{s}" / f"{m}.parquet" for m in modalities}, seqs.n_items)
    generator = load_generator(str(init))
    users, history, target = training_samples(seqs, generator.history_cap)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.warmup + args.steps):
        rows = rng.choice(len(target), args.batch_size, replace=False)
        batches.append(
            (
                torch.from_numpy(history[rows]),
                torch.from_numpy(target[rows]),
                torch.from_numpy(tables["train"][users[rows]]),
            )
        )

    runs = {}
    for name, terms in ABLATIONS.items():
        torch.manual_seed(0)
        joint_cfg = {key: cfg[key] for key in JOINT_KEYS} | {"terms": list(terms)}
        model = JointModel(copy.deepcopy(generator), modalities, joint_cfg).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        runs[name] = (model, optimizer, [])

    order = list(ABLATIONS)
    shuffle = random.Random(0)
    for i, (h, t, table) in enumerate(batches):
        shuffle.shuffle(order)
        for name in order:
            model, optimizer, times = runs[name]
            start = time.perf_counter()
            total, _ = model.loss(h, t, table, labels, table, None)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)

    control = statistics.median(runs["none"][2])
    print(
        f"{d}, seed {s}: {args.steps} interleaved steps per ablation, batch {args.batch_size}, "
        f"{args.threads} threads, {len(ABLATIONS)} ablations"
    )
    print(f"{'ablation':<18}{'losses':<28}{'median s/step':>14}{'ratio to mcrl_none':>20}")
    for name, terms in ABLATIONS.items():
        median = statistics.median(runs[name][2])
        losses = " + ".join(f"L_{t}" for t in terms) or "none (L_ID alone)"
        print(f"{'mcrl_' + name:<18}{losses:<28}{median:>14.4f}{median / control:>20.3f}")


if __name__ == "__main__":
    main()
