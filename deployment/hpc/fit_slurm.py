"""Fit a Gaussian mixture on a SLURM cluster, with workers started by dask-jobqueue.

    pip install "dask_em[s3]" dask-jobqueue       # in a venv every node can see
    python deployment/hpc/fit_slurm.py /scratch/$USER/measurements.zarr \\
        --components 8 --out /scratch/$USER/gmm8.zarr \\
        --jobs 4 --cores 16 --processes 4 --memory 64GB --walltime 01:00:00 \\
        --queue compute --account myproject \\
        --prologue "source /scratch/$USER/venv/bin/activate"

This process runs the Dask scheduler and the fit; each SLURM job (``--jobs``) starts
``--processes`` Dask workers that connect back to it, so run it where the compute nodes
can reach it: a login node that allows it, or a small batch job (fit_slurm.sbatch).
``--print-job-script`` shows the batch script of one worker job and exits.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="Zarr array on a filesystem every node sees, or s3://...")
    parser.add_argument("--components", type=int, required=True)
    parser.add_argument("--out", required=True, help="where to save the model (Zarr)")
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs of workers")
    parser.add_argument("--cores", type=int, default=8, help="cores per job")
    parser.add_argument("--processes", type=int, default=2, help="Dask workers per job")
    parser.add_argument("--memory", default="32GB", help="memory per job")
    parser.add_argument("--walltime", default="01:00:00")
    parser.add_argument("--queue", help="SLURM partition (-p)")
    parser.add_argument("--account", help="SLURM account (-A)")
    parser.add_argument("--interface", help="network interface of the nodes, e.g. ib0")
    parser.add_argument(
        "--prologue",
        action="append",
        default=[],
        help="shell line run in each job before the workers start (repeatable)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="encrypt all Dask traffic with a temporary certificate (written to $HOME)",
    )
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-job-script", action="store_true")
    return parser


def make_cluster(args: argparse.Namespace):
    from dask_jobqueue import SLURMCluster

    options = {}
    if args.tls:  # dask-jobqueue creates the certificate and uses tls://
        options = {"security": True, "shared_temp_directory": os.path.expanduser("~")}
    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,
        processes=args.processes,
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        local_directory="$TMPDIR",  # node-local disk for spilling, expanded in the job
        log_directory="dask-logs",
        job_script_prologue=args.prologue,
        scheduler_options={"dashboard_address": ":8787"},
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cluster = make_cluster(args)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0

    from distributed import Client

    from dask_em import GaussianMixture

    with cluster, Client(cluster) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        cluster.scale(jobs=args.jobs)
        client.wait_for_workers(args.processes, timeout=3600)  # at least one job running
        model = GaussianMixture(
            args.components,
            max_iter=args.max_iter,
            tol=args.tol,
            random_state=args.seed,
            verbose=1,
        ).fit(args.data)
        model.save(args.out)
    print(f"{model.n_iter_} iterations, converged={model.converged_}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
