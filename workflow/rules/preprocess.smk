# preprocess: raw input or generator -> results/{system}/data.h5


rule preprocess:
    input:
        preprocess_inputs,
    output:
        P("data"),
    params:
        spec=section("systems", "{system}"),
        cmd=flowsci_cmd("preprocess"),
    resources:
        runtime=fixed_runtime(120),
        cpus_per_task=cpus_per_task,
        mem_mb=MEM_MB["preprocess"],
    log:
        P("log_preprocess"),
    benchmark:
        f"{RESULTS}/{{system}}/benchmarks/preprocess.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.cmd} --system {wildcards.system} --force > {log} 2>&1"
