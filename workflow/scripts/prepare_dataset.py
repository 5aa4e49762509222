"""Rule prepare_dataset: raw files to items, users and split interactions."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid import stages  # noqa: E402

stages.prepare_dataset(
    spec=snakemake.params.spec,
    raw={name.removeprefix("raw_"): path for name, path in snakemake.input.items() if name.startswith("raw_")},
    protocol=snakemake.params.protocol,
    out=dict(snakemake.output.items()),
)
