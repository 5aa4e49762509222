"""Benchmark: retrieval time per user as the catalogue grows, AR beam search vs HDNAG vs dense scoring.

Simulated catalogues of ``--sizes`` items (default 10k, 100k, 1M) with
random IDs of the shapes the pipeline uses and randomly initialised models
(latency does not depend on trained weights):

- **AR beam search**: the TIGER-style encoder-decoder over 3 levels of
  ``--codes`` codes plus a dedup token, trie-constrained beam search of width
  ``--beam`` (:func:`pmsid.models.beam.beam_search`);
- **HDNAG two-stage**: ``--coarse`` coarse and ``--fine`` fine clusters
  (items spread uniformly over fine clusters, ``parent[f] = f mod coarse``),
  the top ``--c`` coarse IDs recalled and the list cut at ``--budget``
  candidates; and the same without a budget (every recalled item scored);
- **dense scoring**: SASRec's ``history -> every item embedding`` dot
  products and a full sort, the O(N d) reference;
- a sanity row at the smallest size: Hugging Face ``generate`` (beam search
  of the same width, ``prefix_allowed_tokens_fn`` walking the same trie) on a
  GPT-2 decoder of the same width and total depth reading the history's ID
  tokens, the way public TIGER implementations decode. It shows what the
  pipeline's batched trie search is compared with, not a method.

Every method ranks the same ``--users`` random histories, batched
(``--batch`` users per call) after one warm-up call; the time is the median
of ``--repeats`` runs divided by the users. The growth exponent is the
least-squares slope of log(time) against log(N): 1 is linear in the
catalogue, 0 independent of it. Writes ``results/bench/hdnag_scale.csv``.

    PYTHONPATH=workflow/scripts .venv/bin/python bench/hdnag_scale.py            # about 5 min on 2 cores
    PYTHONPATH=workflow/scripts .venv/bin/python bench/hdnag_scale.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pmsid.models.beam import Trie, beam_search
from pmsid.models.generator import TigerGenerator
from pmsid.models.hdnag import HdnagGenerator, InvertedIndex, two_stage_topk
from pmsid.models.sasrec import SASRec
from pmsid.quantize.rq_kmeans import add_dedup_level

K = 20  # list length
CAP = 20  # history length


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--users", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--codes", type=int, default=256, help="codes per level of the AR IDs")
    p.add_argument("--coarse", type=int, default=256)
    p.add_argument("--fine", type=int, default=4096)
    p.add_argument("--c", type=int, default=8, help="coarse IDs recalled")
    p.add_argument("--budget", type=int, default=1000, help="candidates scored per user")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--out", default="results/bench/hdnag_scale.csv")
    return p.parse_args()


def timed(fn, batches: list, repeats: int) -> float:
    """Median over ``repeats`` of the wall time of ``fn`` over every batch, after one warm-up call."""
    fn(batches[0])
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


@torch.no_grad()
def run_size(n: int, args, rng: np.random.Generator) -> list[dict]:
    hist = rng.integers(0, n, size=(args.users, CAP))
    batches = [hist[s : s + args.batch] for s in range(0, len(hist), args.batch)]
    size = dict(d_model=args.d_model, n_heads=4, d_ff=4 * args.d_model, dropout=0.0)
    rows = []

    ar_codes = add_dedup_level(rng.integers(0, args.codes, size=(n, 3)))
    tiger = TigerGenerator(torch.from_numpy(ar_codes), CAP, encoder_tokens="item", **size).eval()
    trie = Trie(ar_codes, tiger.level_sizes)
    seconds = timed(lambda h: beam_search(tiger, trie, h, args.beam, None, args.batch), batches, args.repeats)
    rows.append({"method": "AR beam search", "n_items": n, "ms_per_user": 1e3 * seconds / args.users})

    fine = rng.integers(0, args.fine, size=n)
    parent = np.arange(args.fine) % args.coarse
    h_codes = add_dedup_level(np.stack([parent[fine], fine], axis=1))
    hdnag = HdnagGenerator(torch.from_numpy(h_codes), torch.from_numpy(parent), CAP, **size).eval()
    index = InvertedIndex(hdnag.codes[:, 0], hdnag.n_coarse)
    for label, budget in (("HDNAG two-stage, budget", args.budget), ("HDNAG two-stage, no budget", None)):

        def two_stage(h, budget=budget):
            return two_stage_topk(hdnag, index, hdnag.log_probs(torch.from_numpy(h)), K, args.c, budget)

        seconds = timed(two_stage, batches, args.repeats)
        scored = float(two_stage(hist[: args.batch])[2].float().mean())
        rows.append({"method": label, "n_items": n, "ms_per_user": 1e3 * seconds / args.users,
                     "candidates_per_user": scored})  # fmt: skip

    sasrec = SASRec(n, CAP, n_layers=2, **{**size, "n_heads": 2}).eval()
    seconds = timed(lambda h: torch.topk(sasrec.scores(torch.from_numpy(h)), K), batches, args.repeats)
    rows.append({"method": "dense scoring (SASRec)", "n_items": n, "ms_per_user": 1e3 * seconds / args.users,
                 "candidates_per_user": float(n)})  # fmt: skip
    for row in rows:
        print(f"  {row['method']:<28} N={n:>9,}: {row['ms_per_user']:8.3f} ms/user", flush=True)
    return rows


@torch.no_grad()
def hf_generate_row(n: int, args, rng: np.random.Generator, users: int = 16) -> dict:
    """Hugging Face beam search with a Python trie callback, GPT-2 of the AR model's size (module docstring)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    codes = add_dedup_level(rng.integers(0, args.codes, size=(n, 3)))
    sizes = [int(k) for k in codes.max(axis=0) + 1]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tokens = codes + offsets  # one vocabulary, as the generator's
    bos = int(sum(sizes))
    children: dict[tuple, list[int]] = {}
    for row in tokens:
        for depth in range(len(row)):
            children.setdefault(tuple(row[:depth]), set()).add(int(row[depth]))
    children = {k: sorted(v) for k, v in children.items()}
    config = GPT2Config(vocab_size=bos + 1, n_positions=CAP * 4 + 8, n_embd=args.d_model, n_layer=4, n_head=4,
                        bos_token_id=bos, eos_token_id=bos, pad_token_id=bos)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    hist = rng.integers(0, n, size=(users, CAP))
    prompt_len = CAP * 4 + 1

    def allowed(batch_id, ids):
        return children.get(tuple(ids[prompt_len:].tolist()), [bos])

    def one(h):
        prompt = torch.from_numpy(np.concatenate([tokens[h].reshape(-1), [bos]]))[None]
        model.generate(prompt, max_new_tokens=4, num_beams=args.beam, num_return_sequences=args.beam,
                       prefix_allowed_tokens_fn=allowed, do_sample=False)  # fmt: skip

    one(hist[0])
    start = time.perf_counter()
    for h in hist:
        one(h)
    ms = 1e3 * (time.perf_counter() - start) / users
    print(f"  {'HF generate (GPT-2, trie fn)':<28} N={n:>9,}: {ms:8.3f} ms/user at batch 1", flush=True)
    return {"method": "HF generate, batch 1 (sanity)", "n_items": n, "ms_per_user": ms}


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"torch threads {torch.get_num_threads()}, {args.users} users in batches of {args.batch}")
    rows = [row for n in args.sizes for row in run_size(n, args, rng)]
    # The pipeline's beam search at batch 1 on the same catalogue, beside Hugging Face's.
    n = min(args.sizes)
    ar_codes = add_dedup_level(np.random.default_rng(1).integers(0, args.codes, size=(n, 3)))
    tiger = TigerGenerator(torch.from_numpy(ar_codes), CAP, encoder_tokens="item", d_model=args.d_model,
                           n_heads=4, d_ff=4 * args.d_model, dropout=0.0).eval()  # fmt: skip
    trie = Trie(ar_codes, tiger.level_sizes)
    hist = rng.integers(0, n, size=(16, CAP))
    with torch.no_grad():
        seconds = timed(lambda h: beam_search(tiger, trie, h, args.beam, None, 1), [hist], args.repeats)
    sanity = [
        {"method": "AR beam search, batch 1", "n_items": n, "ms_per_user": 1e3 * seconds / len(hist)},
        hf_generate_row(n, args, rng),
    ]
    print(f"  {'AR beam search, batch 1':<28} N={n:>9,}: {sanity[0]['ms_per_user']:8.3f} ms/user", flush=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([frame, pd.DataFrame(sanity)]).to_csv(out, index=False)
    print("\nms per user (rows: method, columns: catalogue size) and the growth exponent d log t / d log N:")
    wide = frame.pivot(index="method", columns="n_items", values="ms_per_user")
    for method, times in wide.iterrows():
        slope = np.polyfit(np.log(times.index.to_numpy(float)), np.log(times.to_numpy(float)), 1)[0]
        cells = "  ".join(f"{t:9.3f}" for t in times)
        print(f"  {method:<28} {cells}   exponent {slope:+.2f}")
    ar = wide.loc["AR beam search"]
    print("\nspeed-up of each method over AR beam search at each size:")
    for method, times in wide.iterrows():
        print(f"  {method:<28} " + "  ".join(f"{r:7.1f}x" for r in ar / times))
    print(f"\nsanity, N = {n:,}, batch 1: the pipeline's beam search {sanity[0]['ms_per_user']:.2f} ms/user, "
          f"Hugging Face generate {sanity[1]['ms_per_user']:.2f} ms/user")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
