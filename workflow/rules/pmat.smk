# PMAT (THESIS.md section 4): the user-modality preference network, the
# prototype ID tables (global P = 1 and personalized), the drift-triggered
# update replay, and the generator trained and evaluated under those tables.
# Evaluations pmat_global / pmat_static / pmat_full are the three ablations.


rule pmat_attention:
    input:
        unpack(get_truth_input),
        features=get_feature_paths,
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        users=rules.prepare_dataset.output.users,
        code=get_package_sources("methods/pmat", "train", "data/sequences.py"),
    output:
        model="results/pmat/{dataset}/seed{seed}/attention.pt",
        log="results/pmat/{dataset}/seed{seed}/attention_log.parquet",
        weights="results/pmat/{dataset}/seed{seed}/weights.parquet",
        preference="results/pmat/{dataset}/seed{seed}/preference.json",
    log:
        "logs/pmat_attention/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/pmat_attention/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="2h",
    params:
        cfg=get_pmat_attention_params(),
        modalities=lambda wc: get_spec(wc.dataset)["modalities"],
        device=config["features"]["device"],
    script:
        "../scripts/pmat_attention.py"


rule pmat_ids:
    input:
        attention=rules.pmat_attention.output.model,
        features=get_feature_paths,
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_package_sources("methods/pmat", "quantize", "data/sequences.py"),
    output:
        ids="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/ids.parquet",
        prototypes="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/prototypes.parquet",
        assignment="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/assignment.parquet",
        quality="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet",
    log:
        "logs/pmat_ids/{dataset}_{variant}_seed{seed}.log",
    benchmark:
        "benchmarks/pmat_ids/{dataset}_{variant}_seed{seed}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="2h",
    params:
        modalities=lambda wc: get_spec(wc.dataset)["modalities"],
        prototypes=config["pmat"]["prototypes"],
        max_fit_rows=config["pmat"]["max_fit_rows"],
        tokenizer=config["tokenizer"],
    script:
        "../scripts/pmat_ids.py"


rule pmat_replay:
    input:
        attention=rules.pmat_attention.output.model,
        features=get_feature_paths,
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        ids="results/tokenize/{dataset}/pmat_personalized/seed{seed}/ids.parquet",
        prototypes="results/tokenize/{dataset}/pmat_personalized/seed{seed}/prototypes.parquet",
        assignment="results/tokenize/{dataset}/pmat_personalized/seed{seed}/assignment.parquet",
        code=get_package_sources("methods/pmat", "data/sequences.py"),
    output:
        events="results/pmat/{dataset}/seed{seed}/replay/events.parquet",
        summary="results/pmat/{dataset}/seed{seed}/replay/summary.json",
        assignment="results/pmat/{dataset}/seed{seed}/replay/assignment.parquet",
    log:
        "logs/pmat_replay/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/pmat_replay/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="1h",
    params:
        pmat=config["pmat"],
        history_cap=config["protocol"]["history_cap"],
    script:
        "../scripts/pmat_replay.py"


rule train_pmat:
    input:
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        ids="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/ids.parquet",
        assignment="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/assignment.parquet",
        code=get_package_sources(
            "models",
            "train",
            "evaluate",
            "data/sequences.py",
            "methods/pmat/stages.py",
        ),
    output:
        model="results/train/{dataset}/pmat_{variant}/seed{seed}/model.pt",
        log="results/train/{dataset}/pmat_{variant}/seed{seed}/train_log.parquet",
    log:
        "logs/train_pmat/{dataset}_{variant}_seed{seed}.log",
    benchmark:
        "benchmarks/train_pmat/{dataset}_{variant}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem="8GB",
        runtime="4h",
    params:
        kind="pmat_{variant}",
        model=get_train_params("tiger"),
        checkpoint="results/checkpoints/{dataset}/pmat_{variant}/seed{seed}/last.pt",
        device=config["features"]["device"],
        deterministic=config["deterministic"],
    script:
        "../scripts/train_model.py"


rule evaluate_pmat:
    input:
        unpack(get_pmat_evaluate_inputs),
        code=get_package_sources(
            "models",
            "train",
            "evaluate",
            "data/sequences.py",
            "methods/pmat/stages.py",
        ),
    output:
        per_user="results/evaluate/{dataset}/pmat_{ablation}/seed{seed}/per_user.parquet",
        metrics="results/evaluate/{dataset}/pmat_{ablation}/seed{seed}/metrics.parquet",
    log:
        "logs/evaluate_pmat/{dataset}_{ablation}_seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_pmat/{dataset}_{ablation}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        kind="pmat_{ablation}",
        evaluation=config["evaluation"],
        protocol=config["protocol"],
        device=config["features"]["device"],
    script:
        "../scripts/evaluate_model.py"
