"""Rule hkmeans_ids: HDNAG's hierarchical (coarse, fine, dedup) IDs and their quality, per run seed."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid.quantize.hierarchical import tokenize_hierarchical  # noqa: E402

params = snakemake.params.tokenizer  # config hdnag's tokenizer keys, seed = the run seed
tokenize_hierarchical(
    list(snakemake.input.features),
    snakemake.output.ids,
    snakemake.output.quality,
    coarse_size=params["coarse_size"],
    fine_size=params["fine_size"],
    seed=params["seed"],
    n_init=params["n_init"],
    weights=snakemake.params.weights,
)
