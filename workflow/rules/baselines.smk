# Stage 7: baselines. SASRec with cross-entropy over the whole catalogue.


rule train_sasrec:
    input:
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_package_sources("models", "train", "evaluate", "data/sequences.py"),
    output:
        model="results/train/{dataset}/sasrec/seed{seed}/model.pt",
        log="results/train/{dataset}/sasrec/seed{seed}/train_log.parquet",
    log:
        "logs/train_sasrec/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/train_sasrec/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="4h",
    params:
        model=get_train_params("sasrec"),
        checkpoint="results/checkpoints/{dataset}/sasrec/seed{seed}/last.pt",
        device=config["features"]["device"],
        deterministic=config["deterministic"],
    script:
        "../scripts/train_model.py"
