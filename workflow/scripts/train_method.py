"""Rule train: train one registered method on one dataset for one seed."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.run import train_method  # noqa: E402

train_method(
    method=snakemake.wildcards.method,
    dataset=snakemake.wildcards.dataset,
    seed=int(snakemake.wildcards.seed),
    inputs=dict(snakemake.input.items()),
    outputs=dict(snakemake.output.items()),
    params=dict(snakemake.params.items()),
    gpus=int(snakemake.resources.get("gpu", 0)),
)
