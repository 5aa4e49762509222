"""Rule pseudolabels: k-means cluster of every item, per modality."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid.quantize.kmeans import pseudolabels_for  # noqa: E402

params = snakemake.params.pseudolabels
pseudolabels_for(snakemake.input.features, snakemake.output.labels, params["n_clusters"], params["seed"])
