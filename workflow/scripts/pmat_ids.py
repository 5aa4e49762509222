"""Rule pmat_ids: preference prototypes and their semantic-ID tables."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.pmat import stages  # noqa: E402

stages.tokenize(
    variant=snakemake.wildcards.variant,
    inputs={**dict(snakemake.input.items()), "features": list(snakemake.input.features)},
    modalities=list(snakemake.params.modalities),
    n_prototypes=snakemake.params.prototypes,
    tokenizer=snakemake.params.tokenizer,
    outputs=dict(snakemake.output.items()),
    max_fit_rows=snakemake.params.max_fit_rows,
    fusion=snakemake.params.fusion,
)
