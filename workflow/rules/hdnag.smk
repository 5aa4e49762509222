# HDNAG's hierarchical IDs: coarse k-means of the fused item features (the
# ones RQ-KMeans quantizes), fine k-means nested in every coarse cluster, a
# dedup token; with the same ID-quality table as every tokenizer. One per
# run seed. The generator trains and ranks through the generic train and
# evaluate rules (methods hdnag, hdnag_no_align, hdnag_single).


rule hkmeans_ids:
    input:
        features=get_feature_paths,
        code=get_code("pmsid.quantize.hierarchical"),
    output:
        ids="results/tokenize/{dataset}/hkmeans/seed{seed}/ids.parquet",
        quality="results/tokenize/{dataset}/hkmeans/seed{seed}/quality.parquet",
    log:
        "logs/hkmeans_ids/{dataset}_seed{seed}.log",
    benchmark:
        "benchmarks/hkmeans_ids/{dataset}_seed{seed}.tsv"
    conda:
        "../../envs/tokenize.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
    params:
        tokenizer=get_hkmeans_params,
        weights=get_fusion_weights,
    script:
        "../scripts/hkmeans_ids.py"


# Every generator of one dataset and seed timed side by side in one process
# (pmsid.methods.efficiency): TIGER's beam search, HDNAG's two-stage
# retrieval and exhaustive scoring, HDNAG single-level, SASRec's dense
# scoring; and HDNAG's accuracy-vs-latency sweep over c and the candidate
# budget. Its two threads hold a 2-core machine alone while it times; on a
# larger one other jobs may share the machine, which moves every method's
# time alike (the speed-ups are ratios within this one job).
rule hdnag_efficiency:
    input:
        unpack(get_efficiency_inputs),
        code=get_code("pmsid.methods.efficiency"),
    output:
        table="results/efficiency/{dataset}/seed{seed}/efficiency.parquet",
        sweep="results/efficiency/{dataset}/seed{seed}/sweep.parquet",
    log:
        "logs/hdnag_efficiency/{dataset}_seed{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime="2h",
        cpus_per_task=get_cpus_per_task,
        gpu=get_gpus,
    params:
        efficiency=config["hdnag"]["efficiency"],
        evaluation=config["evaluation"],
        protocol=PROTOCOL,
        batch_size=config["hdnag"]["eval_batch_size"],
        device=config["features"]["device"],
    script:
        "../scripts/hdnag_efficiency.py"


# The same measurement under the other history switch (protocol.
# report_both_histories), for that protocol's report: a table never mixes
# protocols.
use rule hdnag_efficiency as hdnag_efficiency_other_history with:
    output:
        table=f"results/efficiency/{{dataset}}/seed{{seed}}/{manifest.other_history(config)}/efficiency.parquet",
        sweep=f"results/efficiency/{{dataset}}/seed{{seed}}/{manifest.other_history(config)}/sweep.parquet",
    log:
        f"logs/hdnag_efficiency/{{dataset}}_seed{{seed}}_{manifest.other_history(config)}.log",
    params:
        efficiency=config["hdnag"]["efficiency"],
        evaluation=config["evaluation"],
        protocol={
            **PROTOCOL,
            "exclude_history": not PROTOCOL["exclude_history"],
        },
        batch_size=config["hdnag"]["eval_batch_size"],
        device=config["features"]["device"],
