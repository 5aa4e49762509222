"""pmsid: personalized multimodal semantic IDs for generative recommendation.

All logic of the Snakemake workflow lives in this package; the scripts in
``workflow/scripts/`` are thin entry points that read ``snakemake.*`` and call
one function from here. Sub-packages are named after the domain:

- ``runtime``, ``logs``, ``defaults``: seeds, devices, atomic saves; log
  set-up; every hyperparameter default, read from the config schema.
- ``data``: raw readers per release, the protocol (dedup, 5-core, split),
  Parquet contracts, loaders, the synthetic dataset.
- ``features``: text and image encoders, behaviour features.
- ``quantize``: k-means pseudo-labels, RQ-KMeans semantic IDs, ID quality.
- ``models``: the TIGER-style generator, trie-constrained beam search, SASRec.
- ``train``: the training loop (checkpoints, early stopping) and the
  training recipes of the neural models.
- ``evaluate``: top-K rankings to ranks and metrics, the same for every method.
- ``methods``: the registry of methods and their modules (floors, baselines,
  PMAT, MCRL).
- ``report``: tables and figures, from a manifest of result files.
- ``stages``, ``config``, ``sources``, ``manifest``: what the workflow calls
  (data and feature stages, config checks, rule inputs).
"""

__version__ = "0.1.0"
