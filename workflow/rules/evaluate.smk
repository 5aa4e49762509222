# Evaluation: one rule for every registered method. The method ranks the
# valid and test targets (top-K lists, ranking.parquet); the metrics are
# computed from those lists the same way for every method, and per-user ranks
# are kept for significance tests.


rule evaluate:
    input:
        unpack(get_method_inputs("evaluate")),
        code=get_method_sources,
    output:
        ranking="results/evaluate/{dataset}/{method}/seed{seed}/ranking.parquet",
        per_user="results/evaluate/{dataset}/{method}/seed{seed}/per_user.parquet",
        metrics="results/evaluate/{dataset}/{method}/seed{seed}/metrics.parquet",
    log:
        "logs/evaluate/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}_{method}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime="4h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        evaluation=config["evaluation"],
        protocol=PROTOCOL,
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_method.py"


# The same trained models under the other history switch (protocol.
# report_both_histories): its files beside the main protocol's, in a folder
# named by the protocol, for that protocol's own report.
OTHER_HISTORY = manifest.other_history(config)


use rule evaluate as evaluate_other_history with:
    output:
        ranking=f"results/evaluate/{{dataset}}/{{method}}/seed{{seed}}/{OTHER_HISTORY}/ranking.parquet",
        per_user=f"results/evaluate/{{dataset}}/{{method}}/seed{{seed}}/{OTHER_HISTORY}/per_user.parquet",
        metrics=f"results/evaluate/{{dataset}}/{{method}}/seed{{seed}}/{OTHER_HISTORY}/metrics.parquet",
    log:
        f"logs/evaluate/{{dataset}}_{{method}}_seed{{seed}}_{OTHER_HISTORY}.log",
    benchmark:
        f"benchmarks/evaluate/{{dataset}}_{{method}}_seed{{seed}}_{OTHER_HISTORY}.tsv"
    params:
        evaluation=config["evaluation"],
        protocol={
            **PROTOCOL,
            "exclude_history": not PROTOCOL["exclude_history"],
        },
        device=config["features"]["device"],
