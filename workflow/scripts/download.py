"""Rule download: one raw file of a release, resumed, retried and verified."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid import stages  # noqa: E402

stages.download(snakemake.params.source, snakemake.output.raw, snakemake.params.downloads)
