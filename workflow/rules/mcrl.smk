# MCRL (THESIS.md section 5): stage 2 of the schedule per ablation, on top of
# the stage-1 generator (PMAT's personalized one, or TIGER's); evaluation under
# the stage-1 model's tables; the ID-space measures and the t-SNE map.


rule train_mcrl:
    input:
        unpack(get_mcrl_train_inputs),
        code=get_package_sources(
            "models",
            "train",
            "evaluate",
            "data/sequences.py",
            "methods/mcrl",
            "methods/pmat/stages.py",
        ),
    output:
        model="results/train/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/model.pt",
        log="results/train/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/train_log.parquet",
        components="results/train/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/loss_components.parquet",
    log:
        "logs/train_mcrl/{dataset}_{mcrl_ablation}_seed{seed}.log",
    benchmark:
        "benchmarks/train_mcrl/{dataset}_{mcrl_ablation}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="4h",
    params:
        modalities=lambda wc: get_spec(wc.dataset)["modalities"],
        cfg={
            k: v
            for k, v in config["mcrl"].items()
            if k not in ("datasets", "ablations", "id_space")
        },
        checkpoint="results/checkpoints/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/last.pt",
        device=config["features"]["device"],
        deterministic=config["deterministic"],
    script:
        "../scripts/train_mcrl.py"


rule evaluate_mcrl:
    input:
        unpack(get_mcrl_evaluate_inputs),
        code=get_package_sources(
            "models",
            "train",
            "evaluate",
            "data/sequences.py",
            "methods/pmat/stages.py",
        ),
    output:
        per_user="results/evaluate/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/per_user.parquet",
        metrics="results/evaluate/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/metrics.parquet",
    log:
        "logs/evaluate_mcrl/{dataset}_{mcrl_ablation}_seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_mcrl/{dataset}_{mcrl_ablation}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        # Ranked exactly as the stage-1 model it was fine-tuned from.
        kind=lambda wc: "tiger" if mcrl_base(wc.dataset) == "tiger" else "pmat_full",
        evaluation=config["evaluation"],
        protocol=config["protocol"],
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_model.py"


rule mcrl_id_space:
    input:
        unpack(get_mcrl_label_inputs),
        model=rules.train_mcrl.output.model,
        code=get_package_sources("models", "methods/mcrl"),
    output:
        summary="results/mcrl/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/id_space.json",
    log:
        "logs/mcrl_id_space/{dataset}_{mcrl_ablation}_seed{seed}.log",
    benchmark:
        "benchmarks/mcrl_id_space/{dataset}_{mcrl_ablation}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        modalities=lambda wc: get_spec(wc.dataset)["modalities"],
        cfg=config["mcrl"]["id_space"],
        stage="id_space",
    script:
        "../scripts/mcrl_id_space.py"


# Only for the runs the report's figure shows (first seed; none and all).
rule mcrl_tsne:
    input:
        unpack(get_mcrl_label_inputs),
        model=rules.train_mcrl.output.model,
        code=get_package_sources("models", "methods/mcrl"),
    output:
        tsne="results/mcrl/{dataset}/mcrl_{mcrl_ablation}/seed{seed}/tsne.parquet",
    log:
        "logs/mcrl_tsne/{dataset}_{mcrl_ablation}_seed{seed}.log",
    benchmark:
        "benchmarks/mcrl_tsne/{dataset}_{mcrl_ablation}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        modalities=lambda wc: get_spec(wc.dataset)["modalities"],
        cfg=config["mcrl"]["id_space"],
        stage="tsne",
    script:
        "../scripts/mcrl_id_space.py"
