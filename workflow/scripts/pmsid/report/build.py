"""Build the whole report: tables in three formats, figures, and a README index.

:func:`build_report` is the one function the ``report`` rule's script calls.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pmsid.report import datasets, decoding, figures, hdnag, mcrl, pmat, tables, training

log = logging.getLogger(__name__)


def select(manifest: list[dict], kind: str, section: str | None = None) -> list[str]:
    """Paths of the manifest entries of ``kind`` (and report ``section``), in manifest order."""
    return [
        entry["path"]
        for entry in manifest
        if entry["kind"] == kind and (section is None or section in entry.get("sections", ()))
    ]


def build_report(
    manifest: list[dict],
    out_dir: str | os.PathLike,
    exclude_history: bool,
    baseline_model: str = "sasrec",
    metrics: list[str] = tables.DEFAULT_METRICS,
    significance_metric: str = "NDCG@10",
    alpha: float = 0.05,
    image_policy: str | None = None,
    setting: str | None = None,
    releases: dict[str, str] | None = None,
    note: str | None = None,
) -> list[str]:
    """Write every table and figure of the report into ``out_dir``; returns the written paths.

    ``manifest`` lists every result file with its metadata: ``kind``
    (metrics, per_user, ranking, train_log, components, id_space, tsne,
    quality, pmat_weights, pmat_preference, pmat_replay, pmat_quality,
    dataset_stats, dataset_images), ``path``, and for a method's files
    ``dataset``, ``method``, ``seed``, ``sections`` (the report sections the
    run appears in: main, pmat, mcrl), ``label`` and ``role``. The sections:

    - always: ``main_comparison``, ``significance``, ``id_quality``,
      ``decoding`` (:mod:`pmsid.report.decoding`, every section's runs) and
      ``training_budget`` (:mod:`pmsid.report.training`) as
      ``.csv/.md/.tex/.html``, the figures ``codebook_utilization.png``,
      ``training_curves.png`` and ``metric_comparison.png``, the
      ``datasets`` table, and ``README.md``, which embeds the Markdown
      tables and links the figures;
    - PMAT (:func:`pmsid.report.pmat.write_pmat_report`) when the manifest
      holds PMAT's files: tables ``pmat_ablation``, ``pmat_updates``,
      ``pmat_preference``, ``pmat_id_quality``, figures ``pmat_weights.png``
      and ``pmat_semantic_consistency.png``;
    - MCRL (:func:`pmsid.report.mcrl.write_mcrl_report`) when it holds runs
      of the ``mcrl`` section: tables ``mcrl_ablation``, ``mcrl_id_space``,
      ``mcrl_cost``, figures ``mcrl_loss_curves.png`` and ``mcrl_tsne.png``.
      MCRL's runs stay out of the main comparison.

    The significance table tests every main-table model against the best
    method of role ``baseline`` of its dataset and metric
    (:func:`pmsid.report.tables.significance`, Holm-corrected across the
    table); ``baseline_model`` is the reference only when the main section
    has no baseline. The PMAT and MCRL ablations test their rows against
    their control on ``significance_metric``.

    ``setting`` (config ``setting``: quick or thesis) and ``releases``
    ({dataset: what data it is}, :func:`pmsid.report.releases.describe_release`)
    head every table's caption and the README, then ``note`` (for example how
    the models of a second protocol's report were selected). ``exclude_history`` states whether the evaluation removed the user's
    history items from the ranking; it goes into the captions and must agree
    with every metrics file that records it.
    """
    metrics_paths = select(manifest, "metrics", "main")
    per_user_paths = select(manifest, "per_user", "main")
    # A slice whose main table holds only the floors (``mcrl``) shows its
    # own models' training curves instead.
    train_log_paths = select(manifest, "train_log", "main") or select(manifest, "train_log")
    quality_paths = select(manifest, "quality")
    pmat_weights_paths = select(manifest, "pmat_weights")
    pmat_preference_paths = select(manifest, "pmat_preference")
    pmat_replay_paths = select(manifest, "pmat_replay")
    pmat_quality_paths = select(manifest, "pmat_quality")
    mcrl_metrics_paths = select(manifest, "metrics", "mcrl")
    mcrl_per_user_paths = select(manifest, "per_user", "mcrl")
    mcrl_components_paths = select(manifest, "components", "mcrl")
    mcrl_id_space_paths = select(manifest, "id_space", "mcrl")
    mcrl_tsne_paths = select(manifest, "tsne", "mcrl")
    dataset_stats_paths = select(manifest, "dataset_stats")
    dataset_images_paths = select(manifest, "dataset_images")
    # Checked first, so that a partial set of PMAT inputs fails before any work.
    pmat_inputs = [pmat_weights_paths, pmat_preference_paths, pmat_replay_paths, pmat_quality_paths]
    with_pmat = pmat.requested(*pmat_inputs)
    mcrl_inputs = [mcrl_per_user_paths, mcrl_components_paths, mcrl_id_space_paths, mcrl_tsne_paths]
    with_mcrl = mcrl.requested(mcrl_metrics_paths, *mcrl_inputs)
    header = " ".join(part for part in (tables.caption_header(setting, releases), note) if part) or None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    runs = tables.collect_runs(metrics_paths, exclude_history=exclude_history)
    # Every main-table model is tested against the best baseline of its dataset and metric.
    baselines = tables.SectionRows.from_manifest(manifest, "main").with_role("baseline") or [baseline_model]
    sig = tables.significance(per_user_paths, baselines, metrics=tables.SIGNIFICANCE_METRICS, alpha=alpha)
    sig_caption = " ".join(
        [
            tables.significance_caption(baselines, tables.SIGNIFICANCE_METRICS, alpha),
            tables.protocol_caption(exclude_history, metrics),
        ]
    )
    main = tables.mark_significant(tables.main_table(runs, split="test", metrics=metrics), sig)
    main_caption = tables.main_caption(exclude_history, metrics, split="test", alpha=alpha)
    written += tables.write_table_formats(main, out / "main_comparison", main_caption, header)
    written += tables.write_table_formats(sig, out / "significance", sig_caption, header)

    quality = tables.collect_quality(quality_paths)
    id_quality = tables.id_quality_table(quality_paths)
    written += tables.write_table_formats(id_quality, out / "id_quality", tables.ID_QUALITY_CAPTION, header)

    # Every TIGER-style run of every section: constrained against unconstrained beam search.
    all_runs = tables.collect_runs(select(manifest, "metrics"), exclude_history=exclude_history)
    decoding_caption = decoding.DECODING_CAPTION + " " + tables.protocol_caption(exclude_history, metrics)
    written += tables.write_table_formats(decoding.decoding_table(all_runs), out / "decoding", decoding_caption, header)

    # Every trained model of every section: its budget, best epoch and whether it stopped early.
    method_order = list(dict.fromkeys(e["method"] for e in manifest if "method" in e))
    budget = training.budget_table(training.collect_budgets(select(manifest, "train_log")), method_order)
    written += tables.write_table_formats(budget, out / "training_budget", training.BUDGET_CAPTION, header)

    figure_captions = {
        "metric_comparison.png": (
            "Test Recall@10 and NDCG@10 per dataset and model; bars are means over seeds, "
            "error bars the standard deviation over seeds."
        ),
        "training_curves.png": (
            "Training loss (mean per epoch) and validation NDCG@10 per epoch, one line per "
            "dataset / model / seed, one column per dataset."
        ),
        "codebook_utilization.png": (
            "Share of codes used (left) and normalized entropy of code usage (right) at each "
            "codebook level, per dataset and tokenizer; 1 is the ideal."
        ),
    }
    written.append(figures.plot_metric_comparison(runs, out / "metric_comparison.png"))
    written.append(figures.plot_training_curves(train_log_paths, out / "training_curves.png"))
    written.append(figures.plot_codebook_utilization(quality, out / "codebook_utilization.png"))

    sections = []
    if dataset_stats_paths:
        table = datasets.dataset_table(dataset_stats_paths, dataset_images_paths, image_policy)
        written += tables.write_table_formats(table, out / "datasets", datasets.DATASETS_CAPTION, header)
        sections.append(("Datasets", "datasets", datasets.DATASETS_CAPTION))
    sections += [
        ("Main comparison", "main_comparison", main_caption),
        ("Significance against the best baseline", "significance", sig_caption),
        ("Semantic-ID quality", "id_quality", tables.ID_QUALITY_CAPTION),
        ("Constrained and unconstrained decoding", "decoding", decoding_caption),
        ("Training budgets", "training_budget", training.BUDGET_CAPTION),
    ]
    if with_pmat:
        # The PMAT table's own rows: its oracle reference is in no other table.
        pmat_runs = tables.collect_runs(select(manifest, "metrics", "pmat"), exclude_history=exclude_history)
        pmat_written, pmat_sections, pmat_figures = pmat.write_pmat_report(
            pmat_runs, select(manifest, "per_user", "pmat"), *pmat_inputs, out=out, exclude_history=exclude_history,
            rows=tables.SectionRows.from_manifest(manifest, "pmat"),
            metrics=metrics, significance_metric=significance_metric, alpha=alpha, header=header,
        )  # fmt: skip
        written += pmat_written
        sections += pmat_sections
        figure_captions.update(pmat_figures)
    if with_mcrl:
        mcrl_runs = tables.collect_runs(mcrl_metrics_paths, exclude_history=exclude_history)
        mcrl_written, mcrl_sections, mcrl_figures = mcrl.write_mcrl_report(
            mcrl_runs, *mcrl_inputs, out=out, exclude_history=exclude_history,
            rows=tables.SectionRows.from_manifest(manifest, "mcrl"),
            metrics=metrics, significance_metric=significance_metric, alpha=alpha, header=header,
        )  # fmt: skip
        written += mcrl_written
        sections += mcrl_sections
        figure_captions.update(mcrl_figures)
    efficiency_paths = select(manifest, "efficiency")
    if efficiency_paths:
        hdnag_rows = tables.SectionRows.from_manifest(manifest, "hdnag")
        hdnag_written, hdnag_sections, hdnag_figures = hdnag.write_hdnag_report(
            tables.collect_runs(select(manifest, "metrics", "hdnag"), exclude_history=exclude_history),
            select(manifest, "per_user", "hdnag"), efficiency_paths, select(manifest, "efficiency_sweep"),
            out=out, exclude_history=exclude_history, rows=hdnag_rows, metrics=metrics, alpha=alpha, header=header,
        )  # fmt: skip
        written += hdnag_written
        sections += hdnag_sections
        figure_captions.update(hdnag_figures)

    readme = _readme(
        sections=sections,
        out=out,
        figure_captions=figure_captions,
        exclude_history=exclude_history,
        metrics=metrics,
        header=header,
    )
    readme_path = out / "README.md"
    readme_path.write_text(readme, encoding="utf-8")
    written.append(str(readme_path))

    for path in written:
        log.info("report: wrote %s", path)
    return [str(p) for p in written]


def _readme(
    sections, out: Path, figure_captions: dict, exclude_history: bool, metrics: list[str], header: str | None
) -> str:
    """The report's index: setting and data, protocol, seeds, each table (embedded from its .md file), each figure."""
    lines = [
        "# Report",
        "",
        *([header, ""] if header is not None else []),
        tables.protocol_caption(exclude_history, metrics),
        "",
        tables.SEED_NOTE,
        "",
        "Every table is also available as CSV (full precision) and LaTeX (needs `booktabs`).",
        "",
        "## Tables",
        "",
    ]
    for title, stem, _caption in sections:
        # The .md file already starts with the caption, so it is embedded as is.
        body = (out / f"{stem}.md").read_text(encoding="utf-8").strip()
        lines += [
            f"### {title}",
            "",
            body,
            "",
            f"Files: [{stem}.csv]({stem}.csv), [{stem}.md]({stem}.md), [{stem}.tex]({stem}.tex)",
            "",
        ]
    lines += ["## Figures", ""]
    for name, caption in figure_captions.items():
        lines += [f"### {name}", "", caption, "", f"![{caption}]({name})", ""]
    return "\n".join(lines)
