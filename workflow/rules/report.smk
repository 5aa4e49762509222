# The report. Its inputs come from a manifest of every result file with its
# metadata (dataset, method, seed, report sections, label, role), built from
# the method registry: adding a method adds its rows, not a rule edit. Tables
# as CSV, Markdown and LaTeX; seaborn figures. Items wrapped in report() also
# go into `snakemake --report`'s HTML report.


rule report:
    input:
        results=get_report_inputs(),
        code=get_code("pmsid.report.build"),
    output:
        **get_report_outputs(),
        index="results/report/README.md",
    log:
        "logs/report/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        manifest=get_report_manifest(),
        exclude_history=config["protocol"]["exclude_history"],
        baseline=get_report_baseline(),
        image_policy=config["features"]["image"]["missing"],
    script:
        "../scripts/build_report.py"
