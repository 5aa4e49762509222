"""SASRec, the ID-based sequential baseline (docs/METHOD.md section 7):
cross-entropy over the whole catalogue, ranked by scoring every item."""

from __future__ import annotations

import torch

from pmsid.data.loaders import load_sequences
from pmsid.data.sequences import eval_samples
from pmsid.evaluate.ranking import SPLITS, Ranking, rank_by_scores
from pmsid.runtime import resolve_device, seed_everything
from pmsid.train import recipes


def train(job) -> None:
    """Train SASRec under the job's protocol (``pmsid.train.recipes.train_sasrec``)."""
    seed_everything(job.seed, job.deterministic)
    seqs = load_sequences(job.inputs["interactions"], job.inputs["catalogue"])
    cfg = {
        **job.cfg,
        "history_cap": job.protocol["history_cap"],
        "exclude_history": job.protocol["exclude_history"],
        "ks": job.evaluation["ks"],
        "deterministic": job.deterministic,
    }
    recipes.train_sasrec(seqs, cfg, job.outputs["model"], job.outputs["log"], job.checkpoint, job.seed, job.device)


@torch.no_grad()
def rank(job) -> dict[str, Ranking]:
    """The ``job.k`` best-scored items of every user, ties by item index."""
    dev = resolve_device(job.device)
    torch.set_flush_denormal(True)  # subnormals slow CPU kernels ~10x (see pmsid.train.loop)
    cfg = {**recipes.SASREC_DEFAULTS, **recipes.load_model(job.model, "sasrec")["cfg"]}
    model = recipes.load_sasrec(job.model).to(dev)
    histories = {split: eval_samples(job.seqs, split, cfg["history_cap"])[1] for split in SPLITS}

    def scores(split, users):  # (n, n_items)
        return model.scores(torch.from_numpy(histories[split][users]).to(dev)).float()

    return rank_by_scores(job.seqs, scores, job.k, job.exclude_history, cfg["eval_batch_size"])
