"""Rule report: tables and figures of every run."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from pmsid.report.build import build_report  # noqa: E402

build_report(
    metrics_paths=list(snakemake.input.metrics),
    per_user_paths=list(snakemake.input.per_user),
    quality_paths=list(snakemake.input.quality),
    train_log_paths=list(snakemake.input.train_logs),
    out_dir=Path(snakemake.output.index).parent,
    exclude_history=snakemake.params.exclude_history,
    baseline_model=snakemake.params.baseline,
    # PMAT's inputs are named only when the workflow runs PMAT; without them the report has no PMAT section.
    pmat_weights_paths=list(snakemake.input.get("pmat_weights", [])),
    pmat_preference_paths=list(snakemake.input.get("pmat_preference", [])),
    pmat_replay_paths=list(snakemake.input.get("pmat_replay", [])),
    pmat_quality_paths=list(snakemake.input.get("pmat_quality", [])),
    # MCRL's inputs likewise: its ablations' metrics come apart from `metrics`, so the main table is unchanged.
    mcrl_metrics_paths=list(snakemake.input.get("mcrl_metrics", [])),
    mcrl_per_user_paths=list(snakemake.input.get("mcrl_per_user", [])),
    mcrl_components_paths=list(snakemake.input.get("mcrl_components", [])),
    mcrl_id_space_paths=list(snakemake.input.get("mcrl_id_space", [])),
    mcrl_tsne_paths=list(snakemake.input.get("mcrl_tsne", [])),
    dataset_stats_paths=list(snakemake.input.dataset_stats),
    dataset_images_paths=list(snakemake.input.dataset_images),
    image_policy=snakemake.params.image_policy,
)
