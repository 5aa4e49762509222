"""Rule pmat_replay: drift-triggered ID updates over the held-out interactions."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.pmat import stages  # noqa: E402

stages.replay(
    inputs={**dict(snakemake.input.items()), "features": list(snakemake.input.features)},
    cfg=snakemake.params.pmat,
    history_cap=snakemake.params.history_cap,
    outputs=dict(snakemake.output.items()),
    seed=int(snakemake.wildcards.seed),
)
