# sample: model.pt -> samples/shard-{i}.h5 (one job per shard) -> samples.h5 (gather)
# On a cluster every shard is its own job with its own GPU; the gather is a local rule
# (Snakefile's localrules: it only concatenates the shards).


rule sample_shard:
    input:
        P("model"),
    output:
        P("shard"),
    params:
        spec=run_section("sampling", "flow"),
        cmd=flowsci_cmd("sample"),
    wildcard_constraints:
        shard=r"\d+",
    resources:
        gpu=1,
        runtime=sample_runtime,
        cpus_per_task=cpus_per_task,
        mem_mb=MEM_MB["sample_shard"],
    log:
        P("log_sample"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/sample-{{shard}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --run {wildcards.run} --shard {wildcards.shard}"
        " > {log} 2>&1"


rule sample_gather:
    input:
        lambda w: expand(P("shard"), system=w.system, run=w.run, shard=range(n_shards(w.run))),
    output:
        P("samples"),
    log:
        P("log_gather"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/sample-gather.tsv"
    conda:
        CONDA_ENV
    params:
        cmd=flowsci_cmd("sample"),
    shell:
        "{params.cmd} --run {wildcards.run} --gather > {log} 2>&1"
