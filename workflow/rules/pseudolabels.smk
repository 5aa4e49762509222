# Stage 4: k-means pseudo-labels per modality (positives for contrastive losses).


rule pseudolabels:
    input:
        features="results/features/{dataset}/{modality}.parquet",
        code=get_code("pmsid.quantize.kmeans"),
    output:
        labels="results/pseudolabels/{dataset}/{modality}.parquet",
    log:
        "logs/pseudolabels/{dataset}_{modality}.log",
    benchmark:
        "benchmarks/pseudolabels/{dataset}_{modality}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    params:
        pseudolabels=config["pseudolabels"],
    script:
        "../scripts/pseudolabels.py"
