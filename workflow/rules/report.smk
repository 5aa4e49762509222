# The report. Its inputs come from a manifest of every result file with its
# metadata (dataset, method, seed, report sections, label, role), built from
# the method registry: adding a method adds its rows, not a rule edit. Tables
# as CSV, Markdown and LaTeX; seaborn figures. Items wrapped in report() also
# go into `snakemake --report`'s HTML report.


# One report rule per named slice (pmsid.manifest.SLICES): `report` writes
# every run's report into results/report/ (the default target); the others
# write results/report/<slice>/ for the target rule of the same name. With
# protocol.report_both_histories, `report_history_excluded` (or _included)
# writes the whole report under the other history switch.
for slice, history in REPORTS:

    rule:
        name:
            get_report_name(slice, history)
        input:
            results=get_report_inputs(slice, history),
            code=get_code("pmsid.report.build"),
        output:
            **get_report_outputs(slice, history),
            index=f"{get_report_dir(slice, history)}/README.md",
        log:
            f"logs/report/{history or slice}.log",
        localrule: True
        conda:
            "../../envs/report.yaml"
        params:
            manifest=get_report_manifest(slice, history),
            exclude_history=get_report_exclude_history(history),
            baseline=get_report_baseline(slice),
            image_policy=config["features"]["image"]["missing"],
            setting=config["setting"],
            releases=get_report_releases(slice),
            note=get_report_note(history),
        script:
            "../scripts/build_report.py"
