"""Rules evaluate_tiger, evaluate_sasrec and evaluate_pmat: rank valid and test targets."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid import stages  # noqa: E402

stages.evaluate_model(
    # PMAT rules name the model in params.kind; the others in the rule name.
    model=getattr(snakemake.params, "kind", None) or snakemake.rule.removeprefix("evaluate_"),
    inputs=dict(snakemake.input.items()),
    evaluation=snakemake.params.evaluation,
    protocol=snakemake.params.protocol,
    outputs=dict(snakemake.output.items()),
    device=snakemake.params.device,
)
