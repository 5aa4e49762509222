"""Rule evaluate: rank the valid and test targets with one registered method."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.run import evaluate_method  # noqa: E402

evaluate_method(
    method=snakemake.wildcards.method,
    dataset=snakemake.wildcards.dataset,
    seed=int(snakemake.wildcards.seed),
    inputs=dict(snakemake.input.items()),
    outputs=dict(snakemake.output.items()),
    params=dict(snakemake.params.items()),
)
