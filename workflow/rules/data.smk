# Stage 0-1: raw data to the protocol's items, users and split interactions.


rule synthetic_dataset:
    input:
        code=get_code("pmsid.data.synthetic"),
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


rule planted_dataset:
    input:
        code=get_code("pmsid.data.planted"),
    output:
        reviews="resources/planted/{design}/Planted_5.json.gz",
        meta="resources/planted/{design}/meta_Planted.json.gz",
        truth_users="resources/planted/{design}/truth_users.parquet",
        truth_items="resources/planted/{design}/truth_items.parquet",
        images=directory("resources/planted/{design}/images"),
    log:
        "logs/planted_dataset/{design}.log",
    conda:
        "../../envs/data.yaml"
    params:
        planted=config["planted"],
    script:
        "../scripts/make_planted.py"


# Raw files of the releases (docs/METHOD.md 2.1). Runs on the submitting host
# (cluster nodes often have no internet). The downloader's code is not an
# input on purpose: a change to it must not download gigabytes again.
rule download:
    output:
        raw=f"{config['downloads']['dir']}/{{reader}}/{{filename}}",
    log:
        "logs/download/{reader}/{filename}.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        source=get_download_source,
        downloads=config["downloads"],
    script:
        "../scripts/download.py"


rule prepare_dataset:
    input:
        unpack(get_raw_inputs),
        code=get_stage_code(
            "pmsid.data.ml100k",
            "pmsid.data.amazon2018",
            "pmsid.data.releases",
            "pmsid.data.protocol",
        ),
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
    resources:
        mem_mb=16000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
    params:
        spec=get_prepare_params,
        protocol=PROTOCOL,
    script:
        "../scripts/prepare_dataset.py"


rule resolve_images:
    input:
        catalogue=rules.prepare_dataset.output.catalogue,
        code=get_stage_code("pmsid.data.images"),
    output:
        images="results/data/{dataset}/images.parquet",
    log:
        "logs/resolve_images/{dataset}.log",
    benchmark:
        "benchmarks/resolve_images/{dataset}.tsv"
    localrule: True  # it downloads the item images
    conda:
        "../../envs/data.yaml"
    params:
        image_dir=get_image_dir,
        downloads=config["downloads"],
    script:
        "../scripts/resolve_images.py"
