"""Rule image_features: pooled image-encoder features of the item images."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid import stages  # noqa: E402

stages.image_features(
    snakemake.input.catalogue,
    snakemake.input.images,
    snakemake.output.features,
    snakemake.params.image,
    snakemake.params.device,
)
