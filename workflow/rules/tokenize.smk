# Stage 5: semantic IDs. RQ-KMeans over the fused item features plus a dedup
# level, and the ID-quality figures of the tokenizer. One tokenizer per run
# seed: the seed-s models train and rank under the seed-s IDs, so a model's
# std over seeds includes the tokenizer's.


rule rqkmeans_ids:
    input:
        features=get_feature_paths,
        code=get_code("pmsid.quantize.rq_kmeans"),
    output:
        ids="results/tokenize/{dataset}/rqkmeans/seed{seed}/ids.parquet",
        quality="results/tokenize/{dataset}/rqkmeans/seed{seed}/quality.parquet",
    log:
        "logs/rqkmeans_ids/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/rqkmeans_ids/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
    params:
        tokenizer=get_tokenizer_params,
        weights=get_fusion_weights,
    script:
        "../scripts/rqkmeans_ids.py"
