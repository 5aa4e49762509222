# Training: one rule for every registered method (pmsid.methods.registry).
# Checkpoints for resuming a killed job live under results/checkpoints/,
# outside the declared outputs, because Snakemake deletes the outputs of a
# failed job. `extras` holds a method's further files (MCRL's per-step loss
# components); it is empty for most methods.


rule train:
    input:
        unpack(get_method_inputs("train")),
        code=get_method_sources,
    output:
        model="results/train/{dataset}/{method}/seed{seed}/model.pt",
        log="results/train/{dataset}/{method}/seed{seed}/train_log.parquet",
        extras=directory("results/train/{dataset}/{method}/seed{seed}/extras"),
    log:
        "logs/train/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/train/{dataset}_{method}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime="24h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        cfg=get_method_params,
        protocol=PROTOCOL,
        evaluation=config["evaluation"],
        modalities=get_modalities,
        checkpoint="results/checkpoints/{dataset}/{method}/seed{seed}/last.pt",
        device=config["features"]["device"],
        deterministic=config["deterministic"],
    script:
        "../scripts/train_method.py"
