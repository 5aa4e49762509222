# Stage 5: semantic IDs. RQ-KMeans over the fused item features plus a dedup
# level, and the ID-quality figures of the tokenizer.


rule rqkmeans_ids:
    input:
        features=get_feature_paths,
        code=get_code("pmsid.quantize.rq_kmeans"),
    output:
        ids="results/tokenize/{dataset}/rqkmeans/ids.parquet",
        quality="results/tokenize/{dataset}/rqkmeans/quality.parquet",
    log:
        "logs/rqkmeans_ids/{dataset}.log",
    benchmark:
        "benchmarks/rqkmeans_ids/{dataset}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    params:
        tokenizer=config["tokenizer"],
        weights=get_fusion_weights,
    script:
        "../scripts/rqkmeans_ids.py"
