"""Rules train_tiger, train_sasrec and train_pmat: train one model for one seed."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid import stages  # noqa: E402

stages.train_model(
    # PMAT rules name the model in params.kind; the others in the rule name.
    model=getattr(snakemake.params, "kind", None) or snakemake.rule.removeprefix("train_"),
    inputs=dict(snakemake.input.items()),
    cfg=snakemake.params.model,
    outputs=dict(snakemake.output.items()),
    checkpoint=snakemake.params.checkpoint,
    seed=int(snakemake.wildcards.seed),
    device=snakemake.params.device,
    deterministic=snakemake.params.deterministic,
)
