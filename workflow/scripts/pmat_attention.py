"""Rule pmat_attention: train PMAT's user-modality preference network."""

from pmsid.logs import set_threads, setup_logging

setup_logging(snakemake.log[0])
set_threads(snakemake.threads)

from pmsid.methods.pmat import stages  # noqa: E402

inputs = dict(snakemake.input.items())
stages.train_attention(
    inputs={**inputs, "features": list(snakemake.input.features)},
    modalities=list(snakemake.params.modalities),
    cfg=snakemake.params.cfg,
    seed=int(snakemake.wildcards.seed),
    outputs=dict(snakemake.output.items()),
    truth_path=inputs.get("truth"),
    device=snakemake.params.device,
)
