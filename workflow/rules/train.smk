# train: data.h5 -> model.pt (+ checkpoints/, train_log.csv). Resumes from checkpoints.
# checkpoints/ and train_log.csv are not declared outputs on purpose: Snakemake deletes the
# outputs of a failed or incomplete job, and a rerun must find them to resume.


rule train:
    input:
        P("data"),
    output:
        model=P("model"),
    params:
        spec=run_section("model", "prior", "flow", "training"),
        cmd=flowsci_cmd("train"),
    threads: 4
    resources:
        gpu=1,
    log:
        P("log_train"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/train.tsv"
    conda:
        "../../envs/flowsci.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --run {wildcards.run} > {log} 2>&1"
