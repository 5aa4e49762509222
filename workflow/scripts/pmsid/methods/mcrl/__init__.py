"""MCRL: Multimodal Contrastive Representation Learning (docs/METHOD.md section 5).

- ``losses``: the ID representation (summed ID-token embeddings of the
  generator, projected), per-modality view heads, and the three InfoNCE losses
  L_user, L_intra, L_inter with their weighted sum.
- ``joint``: the generator plus MCRL's heads as one module, the joint
  objective and the schedules.
- ``train``: stage 2 of the two-stage schedule, the generator of stage 1
  fine-tuned under the joint objective, with every loss component logged
  per step.
- ``id_space``: alignment and uniformity of the ID representations, and a
  t-SNE map of them.
- ``stages``: the file-to-function glue the workflow's MCRL rules call.

The ablations: the model ``mcrl_{name}`` trains with the losses
``ABLATIONS[name]``; ``mcrl_none`` is the stage-1 generator fine-tuned for the
same epochs with no MCRL loss, the control every other ablation is compared
with.
"""

ABLATIONS = {
    "none": (),
    "user": ("user",),
    "intra": ("intra",),
    "inter": ("inter",),
    "user_intra": ("user", "intra"),
    "user_inter": ("user", "inter"),
    "intra_inter": ("intra", "inter"),
    "all": ("user", "intra", "inter"),
}
