"""MCRL's ablations as registered methods (``mcrl_none`` ... ``mcrl_all``).

Training is stage 2 of MCRL's schedule on top of the stage-1 generator (input
``init``): :func:`pmsid.methods.mcrl.stages.train`, which also writes the
per-step loss components into the job's ``extras`` folder
(``loss_components.parquet``). Ranking is the generator's beam search under
the stage-1 model's tables (:func:`pmsid.methods.tiger.rank`).
"""

from __future__ import annotations

from pathlib import Path

from pmsid.methods import tiger
from pmsid.methods.mcrl import stages

COMPONENTS = "loss_components.parquet"  # in the train job's extras folder


def train(job) -> None:
    """Fine-tune ``job.inputs["init"]`` with the losses of ``job.options["ablation"]``."""
    outputs = {
        "model": job.outputs["model"],
        "log": job.outputs["log"],
        "components": str(Path(job.outputs["extras"]) / COMPONENTS),
    }
    stages.train(
        inputs=job.inputs,
        outputs=outputs,
        modalities=job.modalities,
        ablation=job.options["ablation"],
        cfg=job.cfg,
        checkpoint=job.checkpoint,
        seed=job.seed,
        device=job.device,
        deterministic=job.deterministic,
    )


rank = tiger.rank
