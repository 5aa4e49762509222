"""Rule resolve_images: a local, decodable image file per item (or a status)."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid import stages  # noqa: E402

stages.resolve_images(
    snakemake.input.catalogue, snakemake.params.image_dir, snakemake.output.images, snakemake.params.downloads
)
