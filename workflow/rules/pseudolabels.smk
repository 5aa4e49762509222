# Stage 4: k-means pseudo-labels per modality (positives for contrastive losses),
# one clustering per run seed (the seed-s MCRL runs read the seed-s labels).


rule pseudolabels:
    input:
        features="results/features/{dataset}/{modality}.parquet",
        code=get_code("pmsid.quantize.kmeans"),
    output:
        labels="results/pseudolabels/{dataset}/seed{seed}/{modality}.parquet",
    log:
        "logs/pseudolabels/{dataset}_{modality}_seed{seed}.log",
    benchmark:
        "benchmarks/pseudolabels/{dataset}_{modality}_seed{seed}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime="1h",
        cpus_per_task=get_cpus_per_task,
    params:
        n_clusters=config["pseudolabels"]["n_clusters"],
    script:
        "../scripts/pseudolabels.py"
