"""Rule text_features: sentence-transformers embeddings of the item texts."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid import stages  # noqa: E402

stages.text_features(
    snakemake.input.catalogue, snakemake.output.features, snakemake.params.text, snakemake.params.device
)
