"""Rule behaviour_features: item embeddings from training-split co-occurrence (deterministic, one per dataset)."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pmsid.features.behaviour import extract_behaviour_features  # noqa: E402

params = snakemake.params.behaviour
extract_behaviour_features(
    snakemake.input.interactions,
    snakemake.input.catalogue,
    snakemake.output.features,
    dim=params["dim"],
    window=params["window"],
)
