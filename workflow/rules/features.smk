# Stages 2-3: per-modality item features, one Parquet file per modality.


rule text_features:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_stage_code("pmsid.features.text"),
    output:
        features=get_feature_output("text"),
    log:
        "logs/text_features/{dataset}.log",
    benchmark:
        "benchmarks/text_features/{dataset}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime="8h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        text=config["features"]["text"],
        device=config["features"]["device"],
    script:
        "../scripts/text_features.py"


rule image_features:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        images=rules.resolve_images.output.images,
        code=get_stage_code("pmsid.features.image"),
    output:
        features=get_feature_output("image"),
    log:
        "logs/image_features/{dataset}.log",
    benchmark:
        "benchmarks/image_features/{dataset}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime="8h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        image=config["features"]["image"],
        device=config["features"]["device"],
    script:
        "../scripts/image_features.py"


rule behaviour_features:
    input:
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_code("pmsid.features.behaviour"),
    output:
        features="results/features/{dataset}/behaviour.parquet",
    log:
        "logs/behaviour_features/{dataset}.log",
    benchmark:
        "benchmarks/behaviour_features/{dataset}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    resources:
        mem_mb=8000,
        runtime="1h",
        cpus_per_task=get_cpus_per_task,
    params:
        behaviour=config["features"]["behaviour"],
    script:
        "../scripts/behaviour_features.py"


# A modality given as precomputed per-item features (dataset_specs.<name>.
# extra_modalities; how audio enters), aligned to the dataset's items.
rule external_features:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        source=get_extra_source,
        code=get_stage_code("pmsid.features.external"),
    output:
        features="results/features/{dataset}/{extra_modality}.parquet",
    log:
        "logs/external_features/{dataset}_{extra_modality}.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=8000,
        runtime="30m",
        cpus_per_task=get_cpus_per_task,
    params:
        extra=get_extra_modality,
    script:
        "../scripts/external_features.py"


# Optional (features.reduce): PCA or a random projection of a modality's
# extracted features to features.reduce.dim.
rule reduce_features:
    input:
        features="results/features/{dataset}/{modality}.full.parquet",
        code=get_stage_code("pmsid.features.reduce"),
    output:
        features="results/features/{dataset}/{modality}.parquet",
    log:
        "logs/reduce_features/{dataset}_{modality}.log",
    wildcard_constraints:
        modality="|".join(REDUCED_MODALITIES) or NEVER,
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=8000,
        runtime="1h",
        cpus_per_task=get_cpus_per_task,
    params:
        reduce=config["features"]["reduce"],
    script:
        "../scripts/reduce_features.py"
