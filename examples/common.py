"""What the examples share: command-line options, a LocalCluster, a scratch Zarr store."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every example takes; an example may add its own before
    :func:`parsed`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the data size (default 1: seconds)"
    )
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler to use instead of a new LocalCluster",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the plot (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The command line's options, with the ``--out`` folder made."""
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def parse_args(description: str) -> argparse.Namespace:
    return parsed(argument_parser(description))


@contextlib.contextmanager
def cluster_and_store(args: argparse.Namespace):
    """A Client of the scheduler at ``args.scheduler``, or of a new LocalCluster of
    ``args.workers`` processes, and a temporary folder for Zarr stores."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if args.scheduler:
            client = stack.enter_context(Client(args.scheduler))
        else:
            cluster = stack.enter_context(
                LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
            )
            client = stack.enter_context(Client(cluster))
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dask_em_example_"))
        print(f"dashboard: {client.dashboard_link}")
        yield client, Path(folder)


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def sizes(base: int, scale: float) -> int:
    return max(1, int(base * scale))
