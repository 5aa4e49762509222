# Stage 9: the report. Tables as CSV, Markdown and LaTeX; seaborn figures.
# Items wrapped in report() also go into `snakemake --report`'s HTML report.


rule report:
    input:
        metrics=get_runs("metrics"),
        per_user=get_runs("per_user"),
        train_logs=get_runs("train_log"),
        quality=get_quality_files(),
        pmat_weights=get_pmat_files("weights"),
        pmat_preference=get_pmat_files("preference"),
        pmat_replay=get_pmat_files("replay"),
        pmat_quality=get_pmat_files("quality"),
        code=get_package_sources("report", "evaluate"),
    output:
        **get_pmat_report_outputs(),
        index="results/report/README.md",
        main_csv=report(
            "results/report/main_comparison.csv",
            caption="../report/main_comparison.rst",
            category="Tables",
        ),
        main_md="results/report/main_comparison.md",
        main_tex="results/report/main_comparison.tex",
        significance_csv=report(
            "results/report/significance.csv",
            caption="../report/significance.rst",
            category="Tables",
        ),
        significance_md="results/report/significance.md",
        significance_tex="results/report/significance.tex",
        quality_csv=report(
            "results/report/id_quality.csv",
            caption="../report/id_quality.rst",
            category="Tables",
        ),
        quality_md="results/report/id_quality.md",
        quality_tex="results/report/id_quality.tex",
        utilization=report(
            "results/report/codebook_utilization.png",
            caption="../report/codebook_utilization.rst",
            category="Figures",
        ),
        curves=report(
            "results/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Figures",
        ),
        comparison=report(
            "results/report/metric_comparison.png",
            caption="../report/metric_comparison.rst",
            category="Figures",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        exclude_history=config["protocol"]["exclude_history"],
        baseline="sasrec",
    script:
        "../scripts/build_report.py"
