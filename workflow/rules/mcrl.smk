# MCRL (docs/METHOD.md section 5): its ablations mcrl_none ... mcrl_all are
# registered methods, trained (stage 2 on the stage-1 generator) and evaluated
# by the generic rules. Its own stages: the ID-space measures and the t-SNE
# map of a trained model's ID representations.


rule mcrl_id_space:
    input:
        unpack(get_pseudolabel_inputs),
        model=rules.train.output.model,
        code=get_code("pmsid.methods.mcrl.stages"),
    output:
        summary="results/mcrl/{dataset}/{method}/seed{seed}/id_space.json",
    log:
        "logs/mcrl_id_space/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/mcrl_id_space/{dataset}_{method}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime="1h",
        cpus_per_task=get_cpus_per_task,
    params:
        modalities=get_modalities,
        cfg=config["mcrl"]["id_space"],
        stage="id_space",
    script:
        "../scripts/mcrl_id_space.py"


# Only for the runs the report's figure shows (first seed; none and all).
rule mcrl_tsne:
    input:
        unpack(get_pseudolabel_inputs),
        model=rules.train.output.model,
        code=get_code("pmsid.methods.mcrl.stages"),
    output:
        tsne="results/mcrl/{dataset}/{method}/seed{seed}/tsne.parquet",
    log:
        "logs/mcrl_tsne/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "benchmarks/mcrl_tsne/{dataset}_{method}_seed{seed}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime="1h",
        cpus_per_task=get_cpus_per_task,
    params:
        modalities=get_modalities,
        cfg=config["mcrl"]["id_space"],
        stage="tsne",
    script:
        "../scripts/mcrl_id_space.py"
