# Stage 6: the TIGER-style generator over semantic-ID tokens. Checkpoints for
# resuming a killed job live under results/checkpoints/, outside the declared
# outputs, because Snakemake deletes the outputs of a failed job.


rule train_tiger:
    input:
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        ids=rules.rqkmeans_ids.output.ids,
        code=get_package_sources("models", "train", "evaluate", "data/sequences.py"),
    output:
        model="results/train/{dataset}/tiger/seed{seed}/model.pt",
        log="results/train/{dataset}/tiger/seed{seed}/train_log.parquet",
    log:
        "logs/train_tiger/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/train_tiger/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="4h",
    params:
        model=get_train_params("tiger"),
        checkpoint="results/checkpoints/{dataset}/tiger/seed{seed}/last.pt",
        device=config["features"]["device"],
        deterministic=config["deterministic"],
    script:
        "../scripts/train_model.py"
