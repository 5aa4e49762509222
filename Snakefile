# pmsid: personalized multimodal semantic IDs for generative recommendation.
# The workflow from raw data to the report; docs/ARCHITECTURE.md maps every
# stage to its rules, files and package modules.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/pseudolabels.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/pmat.smk"
include: "workflow/rules/mcrl.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Light jobs that run on the submitting host, not as cluster jobs.
localrules:
    all,
    synthetic_dataset,
    planted_dataset,
    report,


rule all:
    default_target: True
    input:
        get_final_outputs(),
