"""Rule external_features: a precomputed per-item feature Parquet aligned to the items."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid import stages  # noqa: E402

stages.external_features(
    snakemake.input.catalogue,
    snakemake.input.source,
    snakemake.output.features,
    snakemake.wildcards.extra_modality,
    snakemake.params.extra,
)
