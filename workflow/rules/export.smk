# export (on demand, not part of `all`): a run's samples resampled by their importance weights
# into an unweighted set, for viewers (flowsci export):
#   snakemake results/{system}/{run}/export/resampled.{dcd,xtc,pdb,extxyz,npy}
# as many frames as the run has samples; weights and log q in <output>.weights.csv.
# Needs from common.smk: P, config, flowsci_cmd(stage), fixed_runtime, cpus_per_task, MEM_MB.
rule export:
    input:
        samples=P("samples"),
    output:
        traj=P("export"),
        weights=P("export") + ".weights.csv",
    wildcard_constraints:
        format="dcd|xtc|pdb|extxyz|npy",
    resources:
        runtime=fixed_runtime(30),
        cpus_per_task=cpus_per_task,
        mem_mb=MEM_MB["reweight"],
    log:
        P("log_export"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/export-{{format}}.tsv"
    conda:
        CONDA_ENV
    params:
        n=lambda w: config["runs"][w.run]["sampling"]["n_samples"],
        cmd=flowsci_cmd("export"),
    shell:
        "{params.cmd} --run {wildcards.run} --format {wildcards.format} "
        "--output {output.traj} --resample {params.n} > {log} 2>&1"
