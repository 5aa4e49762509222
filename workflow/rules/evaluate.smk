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
    params:
        evaluation=config["evaluation"],
        protocol=config["protocol"],
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_method.py"
