"""Rule reduce_features: PCA or a random projection of extracted features."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid import stages  # noqa: E402

stages.reduce_features(snakemake.input.features, snakemake.output.features, snakemake.params.reduce)
