"""Rule train_mcrl: stage 2 of MCRL's schedule for one ablation and seed."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.mcrl import stages  # noqa: E402

stages.train(
    inputs=dict(snakemake.input.items()),
    outputs=dict(snakemake.output.items()),
    modalities=list(snakemake.params.modalities),
    ablation=snakemake.wildcards.mcrl_ablation,
    cfg=dict(snakemake.params.cfg),
    checkpoint=snakemake.params.checkpoint,
    seed=int(snakemake.wildcards.seed),
    device=snakemake.params.device,
    deterministic=snakemake.params.deterministic,
)
