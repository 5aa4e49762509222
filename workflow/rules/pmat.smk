# PMAT (docs/METHOD.md section 4): the user-modality preference network, the
# prototype ID tables (global P = 1 and personalized) and the drift-triggered
# update replay. The generator under those tables is trained and evaluated by
# the generic train / evaluate rules as the methods pmat_global, pmat_static
# and pmat_full, the three ablations.


rule pmat_attention:
    input:
        unpack(get_truth_input),
        features=get_feature_paths,
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        users=rules.prepare_dataset.output.users,
        code=get_code("pmsid.methods.pmat.stages"),
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
        mem_mb=16000,
        runtime="4h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        cfg=get_pmat_attention_params(),
        modalities=get_modalities,
        device=config["features"]["device"],
    script:
        "../scripts/pmat_attention.py"


rule pmat_ids:
    input:
        unpack(get_truth_input),
        attention=rules.pmat_attention.output.model,
        users=rules.prepare_dataset.output.users,
        features=get_feature_paths,
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_code("pmsid.methods.pmat.stages"),
    output:
        ids="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/ids.parquet",
        prototypes="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/prototypes.parquet",
        assignment="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/assignment.parquet",
        prefix_tables="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/prefix_tables.parquet",
        quality="results/tokenize/{dataset}/pmat_{variant}/seed{seed}/quality.parquet",
    log:
        "logs/pmat_ids/{dataset}_{variant}_seed{seed}.log",
    benchmark:
        "benchmarks/pmat_ids/{dataset}_{variant}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"  # the preference network (torch) projects the features
    threads: 2
    resources:
        mem_mb=8000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
    params:
        modalities=get_modalities,
        prototypes=config["pmat"]["prototypes"],
        max_fit_rows=config["pmat"]["max_fit_rows"],
        fusion=config["pmat"]["fusion"],
        tokenizer=get_tokenizer_params,
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
        code=get_code("pmsid.methods.pmat.stages"),
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
        mem_mb=8000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
    params:
        pmat=config["pmat"],
        history_cap=config["protocol"]["history_cap"],
    script:
        "../scripts/pmat_replay.py"
