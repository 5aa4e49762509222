"""Rule rqkmeans_ids: RQ-KMeans semantic IDs and their quality figures, per run seed."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid.quantize.rq_kmeans import tokenize  # noqa: E402

params = snakemake.params.tokenizer  # config tokenizer, seed = the run seed (get_tokenizer_params)
tokenize(
    list(snakemake.input.features),
    snakemake.output.ids,
    snakemake.output.quality,
    levels=params["levels"],
    codes=params["codes"],
    seed=params["seed"],
    n_init=params["n_init"],
    weights=snakemake.params.weights,
)
