"""Rules mcrl_id_space and mcrl_tsne: measures and 2-D map of one MCRL model's ID representations."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.mcrl import stages  # noqa: E402

getattr(stages, snakemake.params.stage)(
    inputs=dict(snakemake.input.items()),
    outputs=dict(snakemake.output.items()),
    modalities=list(snakemake.params.modalities),
    cfg=dict(snakemake.params.cfg),
    seed=int(snakemake.wildcards.seed),
)
