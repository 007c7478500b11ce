# train: data.h5 -> model.pt (+ checkpoints/, train_log.csv). Resumes from checkpoints.


rule train:
    input:
        f"{RESULTS}/{{system}}/data.h5",
    output:
        model=f"{RESULTS}/{{system}}/{{run}}/model.pt",
        log_csv=f"{RESULTS}/{{system}}/{{run}}/train_log.csv",
    params:
        spec=section("runs", "{run}"),
        cmd=flowsci_cmd("train"),
    threads: 4
    resources:
        gpu=1,
    log:
        f"{RESULTS}/{{system}}/{{run}}/logs/train.log",
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/train.tsv"
    conda:
        "../../envs/flowsci.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --run {wildcards.run} > {log} 2>&1"
