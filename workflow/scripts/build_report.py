"""Rule report: tables and figures of every run, from the workflow's manifest."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from pmsid.report.build import build_report  # noqa: E402

build_report(
    manifest=list(snakemake.params.manifest),
    out_dir=Path(snakemake.output.index).parent,
    exclude_history=snakemake.params.exclude_history,
    baseline_model=snakemake.params.baseline,
    image_policy=snakemake.params.image_policy,
    setting=snakemake.params.setting,
    releases=dict(snakemake.params.releases),
    note=snakemake.params.note,
)
