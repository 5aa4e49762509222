"""Rule synthetic_dataset: write the generated multimodal dataset."""

from pmsid.logs import setup_logging

setup_logging(snakemake.log[0])

from pathlib import Path  # noqa: E402

from pmsid.data.synthetic import generate_synthetic  # noqa: E402

generate_synthetic(Path(snakemake.output.reviews).parent, **snakemake.params.synthetic)
