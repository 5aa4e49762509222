"""Rule hdnag_efficiency: every generator of one dataset and seed timed side by side."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

import pandas as pd  # noqa: E402

from pmsid.data import contracts  # noqa: E402
from pmsid.data.loaders import load_sequences  # noqa: E402
from pmsid.evaluate.ranking import list_length  # noqa: E402
from pmsid.methods.efficiency import measure  # noqa: E402
from pmsid.runtime import resolve_device  # noqa: E402

inputs = dict(snakemake.input.items())
seqs = load_sequences(inputs["interactions"], inputs["catalogue"])
models = {name.removeprefix("model_"): path for name, path in inputs.items() if name.startswith("model_")}
settings = snakemake.params.efficiency
table, sweep = measure(
    seqs,
    models,
    k=list_length(snakemake.params.evaluation["ks"]),
    beam_size=snakemake.params.evaluation["beam_size"],
    exclude_history=snakemake.params.protocol["exclude_history"],
    batch_size=snakemake.params.batch_size,
    batch1_users=settings["batch1_users"],
    warmup=settings["warmup"],
    sweep_candidates=settings["sweep_candidates"],
    sweep_budgets=settings["sweep_budgets"],
    device=resolve_device(snakemake.params.device),
)
meta = {
    "exclude_history": snakemake.params.protocol["exclude_history"],
    "device": str(resolve_device(snakemake.params.device)),
}
contracts.write_table(table, snakemake.output.table, contracts.EFFICIENCY, metadata=meta)
contracts.write_table(pd.DataFrame(sweep), snakemake.output.sweep, contracts.EFFICIENCY_SWEEP, metadata=meta)
