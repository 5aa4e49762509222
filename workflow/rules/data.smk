# Stage 0-1: raw data to the protocol's items, users and split interactions.


rule synthetic_dataset:
    input:
        code=get_package_sources("data"),
    output:
        reviews="resources/synthetic/Synthetic_5.json.gz",
        meta="resources/synthetic/meta_Synthetic.json.gz",
        truth_users="resources/synthetic/truth_users.parquet",
        truth_items="resources/synthetic/truth_items.parquet",
        images=directory("resources/synthetic/images"),
    log:
        "logs/synthetic_dataset/synthetic.log",
    conda:
        "../../envs/data.yaml"
    params:
        synthetic=config["synthetic"],
    script:
        "../scripts/make_synthetic.py"


rule prepare_dataset:
    input:
        unpack(get_raw_inputs),
        code=get_package_sources("data"),
    output:
        catalogue="results/data/{dataset}/items.parquet",
        users="results/data/{dataset}/users.parquet",
        interactions="results/data/{dataset}/interactions.parquet",
        stats="results/data/{dataset}/stats.json",
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        spec=get_dataset_spec,
        protocol=config["protocol"],
    script:
        "../scripts/prepare_dataset.py"


rule resolve_images:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_package_sources("data"),
    output:
        images="results/data/{dataset}/images.parquet",
    log:
        "logs/resolve_images/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    params:
        image_dir=get_image_dir,
    script:
        "../scripts/resolve_images.py"
