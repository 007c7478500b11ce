# train: data.h5 -> model.pt (+ checkpoints/, train_log.csv). Resumes from checkpoints.
# checkpoints/ and train_log.csv are not declared outputs on purpose: Snakemake deletes the
# outputs of a failed or incomplete job, and a rerun must find them to resume.
# Resource gpu (default 1; --set-resources train:gpu=N or the profile): N > 1 launches
# `torchrun --standalone --nproc_per_node N -m flowsci.cli -- train` (DDP, one process per GPU;
# "--": torchrun would otherwise read `--run` as an abbreviation of its own `--run-path`).


rule train:
    input:
        P("data"),
        init_from_model,
    output:
        model=P("model"),
    params:
        spec=run_section("model", "prior", "flow", "training"),
        args=flowsci_args("train"),
    threads: train_threads()
    resources:
        gpu=1,
        runtime=train_runtime,
        cpus_per_task=cpus_per_task,
        mem_mb=MEM_MB["train"],
    log:
        P("log_train"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/train.tsv"
    conda:
        CONDA_ENV
    shell:
        "if [ {resources.gpu} -gt 1 ]; then"
        " launch='torchrun --standalone --nproc_per_node {resources.gpu} -m flowsci.cli --';"
        " else launch=flowsci; fi;"
        " OMP_NUM_THREADS={threads} $launch {params.args} --run {wildcards.run} > {log} 2>&1"
