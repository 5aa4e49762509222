# The report. Its inputs come from a manifest of every result file with its
# metadata (dataset, method, seed, report sections, label, role), built from
# the method registry: adding a method adds its rows, not a rule edit. Tables
# as CSV, Markdown and LaTeX; seaborn figures. Items wrapped in report() also
# go into `snakemake --report`'s HTML report.


# One report rule per named slice (pmsid.manifest.SLICES): `report` writes
# every run's report into results/report/ (the default target); the others
# write results/report/<slice>/ for the target rule of the same name.
for slice in manifest.SLICES:

    rule:
        name:
            "report" if slice == "all" else f"report_{slice}"
        input:
            results=get_report_inputs(slice),
            code=get_code("pmsid.report.build"),
        output:
            **get_report_outputs(slice),
            index=f"{manifest.slice_dir(slice)}/README.md",
        log:
            f"logs/report/{slice}.log",
        conda:
            "../../envs/report.yaml"
        params:
            manifest=get_report_manifest(slice),
            exclude_history=config["protocol"]["exclude_history"],
            baseline=get_report_baseline(slice),
            image_policy=config["features"]["image"]["missing"],
            setting=config["setting"],
            releases=get_report_releases(slice),
        script:
            "../scripts/build_report.py"
