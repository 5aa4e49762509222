# Stages 2-3: per-modality item features, one Parquet file per modality.


rule text_features:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_package_sources("features"),
    output:
        features="results/features/{dataset}/text.parquet",
    log:
        "logs/text_features/{dataset}.log",
    benchmark:
        "benchmarks/text_features/{dataset}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 2
    resources:
        mem="4GB",
        runtime="1h",
    params:
        text=config["features"]["text"],
        device=config["features"]["device"],
    script:
        "../scripts/text_features.py"


rule image_features:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        images=rules.resolve_images.output.images,
        code=get_package_sources("features"),
    output:
        features="results/features/{dataset}/image.parquet",
    log:
        "logs/image_features/{dataset}.log",
    benchmark:
        "benchmarks/image_features/{dataset}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 2
    resources:
        mem="4GB",
        runtime="2h",
    params:
        image=config["features"]["image"],
        device=config["features"]["device"],
    script:
        "../scripts/image_features.py"


rule behaviour_features:
    input:
        interactions=rules.prepare_dataset.output.interactions,
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_package_sources("features"),
    output:
        features="results/features/{dataset}/behaviour.parquet",
    log:
        "logs/behaviour_features/{dataset}.log",
    benchmark:
        "benchmarks/behaviour_features/{dataset}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    params:
        behaviour=config["features"]["behaviour"],
    script:
        "../scripts/behaviour_features.py"
