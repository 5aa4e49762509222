"""pmsid: personalized multimodal semantic IDs for generative recommendation.

All logic of the Snakemake workflow lives in this package; the scripts in
``workflow/scripts/`` are thin entry points that read ``snakemake.*`` and call
one function from here. Sub-packages are named after the domain:

- ``data``: raw readers per release, the protocol (dedup, 5-core, split),
  Parquet contracts, the synthetic dataset.
- ``features``: text and image encoders, behaviour features.
- ``quantize``: k-means pseudo-labels, RQ-KMeans semantic IDs, ID quality.
- ``models``: the TIGER-style generator, trie-constrained beam search, SASRec.
- ``train``: seeds, checkpoints, the training loop.
- ``evaluate``: ranking metrics.
- ``report``: tables and figures.
"""

__version__ = "0.1.0"
