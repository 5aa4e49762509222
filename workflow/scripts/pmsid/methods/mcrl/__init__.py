"""MCRL: Multimodal Contrastive Representation Learning (THESIS.md section 5).

- ``losses``: the ID representation (summed ID-token embeddings of the
  generator, projected), per-modality view heads, and the three InfoNCE losses
  L_user, L_intra, L_inter with their weighted sum.
"""
