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
include: "workflow/rules/hdnag.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Light jobs that run on the submitting host, not as cluster jobs (the report
# rules too: `localrule: True` in workflow/rules/report.smk).
localrules:
    all,
    synthetic_dataset,
    planted_dataset,
    main,
    baselines,
    pmat,
    mcrl,
    hdnag,


rule all:
    default_target: True
    input:
        get_final_outputs(),


# The named slices of the matrix (pmsid.manifest.SLICES), each a target:
# `snakemake main` runs the main comparison and writes results/report/main/.
rule main:
    input:
        rules.report_main.output.index,


rule baselines:
    input:
        rules.report_baselines.output.index,


rule pmat:
    input:
        rules.report_pmat.output.index,


rule mcrl:
    input:
        rules.report_mcrl.output.index,


rule hdnag:
    input:
        rules.report_hdnag.output.index,
