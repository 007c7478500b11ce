# sample: model.pt -> samples/shard-{i}.h5 (one job per shard) -> samples.h5 (gather)


rule sample_shard:
    input:
        f"{RESULTS}/{{system}}/{{run}}/model.pt",
    output:
        f"{RESULTS}/{{system}}/{{run}}/samples/shard-{{shard}}.h5",
    params:
        spec=section("runs", "{run}", "sampling"),
        cmd=flowsci_cmd("sample"),
    wildcard_constraints:
        shard=r"\d+",
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{system}}/{{run}}/logs/sample-{{shard}}.log",
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/sample-{{shard}}.tsv"
    conda:
        "../../envs/flowsci.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --run {wildcards.run} --shard {wildcards.shard}"
        " > {log} 2>&1"


rule sample_gather:
    input:
        lambda w: expand(
            f"{RESULTS}/{w.system}/{w.run}/samples/shard-{{i}}.h5", i=range(n_shards(w.run))
        ),
    output:
        f"{RESULTS}/{{system}}/{{run}}/samples.h5",
    log:
        f"{RESULTS}/{{system}}/{{run}}/logs/sample-gather.log",
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/sample-gather.tsv"
    conda:
        "../../envs/flowsci.yaml"
    params:
        cmd=flowsci_cmd("sample"),
    shell:
        "{params.cmd} --run {wildcards.run} --gather > {log} 2>&1"
