"""Rule planted_dataset: write one design of the planted-preference datasets."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from pmsid.data.planted import generate_planted  # noqa: E402

generate_planted(Path(snakemake.output.reviews).parent, design=snakemake.wildcards.design, **snakemake.params.planted)
