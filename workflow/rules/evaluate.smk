# Stage 8: full-ranking evaluation on validation and test; per-user ranks are
# kept for significance tests.


rule evaluate_tiger:
    input:
        unpack(get_evaluate_inputs("tiger")),
        code=get_package_sources("models", "train", "evaluate", "data/sequences.py"),
    output:
        per_user="results/evaluate/{dataset}/tiger/seed{seed}/per_user.parquet",
        metrics="results/evaluate/{dataset}/tiger/seed{seed}/metrics.parquet",
    log:
        "logs/evaluate_tiger/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_tiger/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        evaluation=config["evaluation"],
        protocol=config["protocol"],
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_model.py"


rule evaluate_sasrec:
    input:
        unpack(get_evaluate_inputs("sasrec")),
        code=get_package_sources("models", "train", "evaluate", "data/sequences.py"),
    output:
        per_user="results/evaluate/{dataset}/sasrec/seed{seed}/per_user.parquet",
        metrics="results/evaluate/{dataset}/sasrec/seed{seed}/metrics.parquet",
    log:
        "logs/evaluate_sasrec/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_sasrec/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        evaluation=config["evaluation"],
        protocol=config["protocol"],
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_model.py"
