"""Rule pseudolabels: k-means cluster of every item, per modality and run seed."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid.quantize.kmeans import pseudolabels_for  # noqa: E402

pseudolabels_for(
    snakemake.input.features,
    snakemake.output.labels,
    snakemake.params.n_clusters,
    int(snakemake.wildcards.seed),
)
