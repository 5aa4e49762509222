"""PMAT: Personalized Multimodal Adaptive Tokenizer (docs/METHOD.md section 4).

- ``attention``: the user-modality preference network, weights alpha_u on the
  simplex over M >= 2 modalities, trained with a next-item contrastive loss.
- ``prototypes``: P preference prototypes, one ID table each over the
  catalogue, quantized with shared residual codebooks; P = 1 is global fusion.
- ``drift``: long- vs short-term interest, the drift gate and the
  drift-triggered update rule, replayed over held-out interactions.
"""
