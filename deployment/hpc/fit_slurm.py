"""Fit a model on a SLURM cluster, with workers started by dask-jobqueue.

    pip install "dask_em[s3]" dask-jobqueue       # in a venv every node can see
    python deployment/hpc/fit_slurm.py /scratch/$USER/measurements.zarr \\
        --components 8 --out /scratch/$USER/gmm8.zarr \\
        --jobs 4 --cores 16 --processes 4 --memory 64GB --walltime 01:00:00 \\
        --queue compute --account myproject \\
        --prologue "source /scratch/$USER/venv/bin/activate"

This process runs the Dask scheduler; each SLURM job (``--jobs``) starts
``--processes`` Dask workers that connect back to it, so run it where the compute nodes
can reach it: a login node that allows it, or a small batch job (fit_slurm.sbatch).
Once the first job's workers are up it runs ``dask-em fit MODEL DATA ... --scheduler
ADDRESS --checkpoint CHECKPOINT --resume`` (from the same venv) and exits with its
status: run the same command again after a failure (a time limit, a lost node) and the
fit continues from the checkpoint, which must be on a filesystem the next driver sees.
``--print-job-script`` shows the batch script of one worker job, ``--print-fit-command``
the ``dask-em fit`` command; both exit without starting anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="Zarr array on a filesystem every node sees, or s3://...")
    parser.add_argument("--model", default="gmm", help="a dask-em fit MODEL (default gmm)")
    parser.add_argument("--components", type=int, required=True)
    parser.add_argument("--out", required=True, help="where to save the model (Zarr)")
    parser.add_argument(
        "--checkpoint",
        help="the fit's checkpoint, on a shared filesystem (default: OUT's name with "
        ".ckpt.zarr, next to it)",
    )
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
    parser.add_argument("--print-fit-command", action="store_true")
    return parser


def checkpoint_path(args: argparse.Namespace) -> str:
    if args.checkpoint:
        return args.checkpoint
    base = args.out.rstrip("/")
    return (base[: -len(".zarr")] if base.endswith(".zarr") else base) + ".ckpt.zarr"


def fit_command(args: argparse.Namespace, address: str) -> list[str]:
    """The ``dask-em fit`` command line run against the scheduler at ``address``."""
    return [
        "dask-em",
        "fit",
        args.model,
        args.data,
        "--components",
        str(args.components),
        "--out",
        args.out,
        "--scheduler",
        address,
        "--checkpoint",
        checkpoint_path(args),
        "--resume",
        "--max-iter",
        str(args.max_iter),
        "--tol",
        str(args.tol),
        "--seed",
        str(args.seed),
    ]


@contextlib.contextmanager
def client_tls_environment(security):
    """Environment variables giving ``dask-em fit`` the client side of ``security``.

    A temporary certificate lives only in memory: its PEM texts are written to files
    only this user can read, in a directory removed afterwards.
    """
    if security is None:
        yield {}
        return
    config = security.get_tls_config_for_role("client")
    with tempfile.TemporaryDirectory(prefix="dask-em-tls-") as directory:
        environment = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
        names = {"ca_file": "CA_FILE", "cert": "CLIENT__CERT", "key": "CLIENT__KEY"}
        for key, name in names.items():
            value = config.get(key)
            if value and "\n" in value:  # PEM text, not a path
                path = os.path.join(directory, f"{key}.pem")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
                    file.write(value)
                value = path
            if value:
                environment[f"DASK_DISTRIBUTED__COMM__TLS__{name}"] = value
        yield environment


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_fit_command:
        print(shlex.join(fit_command(args, "SCHEDULER_ADDRESS")))
        return 0
    if not args.print_job_script and shutil.which("dask-em") is None:
        parser.error("no dask-em command on PATH: activate the venv that has dask_em")
    cluster = make_cluster(args)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0

    from distributed import Client

    with cluster, Client(cluster) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        cluster.scale(jobs=args.jobs)
        client.wait_for_workers(args.processes, timeout=3600)  # at least one job running
        command = fit_command(args, cluster.scheduler_address)
        print(f"running {shlex.join(command)}", flush=True)
        security = cluster.security if args.tls else None
        with client_tls_environment(security) as tls:
            status = subprocess.run(command, env={**os.environ, **tls}).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
