"""The command line's outputs, checked before any work: never an input, always writable.

An output (``--out``, ``--checkpoint``, labels, the report's files) that is, holds, or
lies inside an input store is refused, with or without ``--overwrite``: real paths are
compared (symlinks and ``file://`` URLs resolved).  Every output's directory is probed
with a file created and removed beside it, so that a fit is never lost at its end for a
path that cannot be written.
"""

from __future__ import annotations

from dask_em.cli.common import UsageError
from dask_em.files import check_writable, overlaps, real_location


def check_outputs(
    inputs: dict[str, str], outputs: dict[str, str], *, overwrite: bool = False
) -> None:
    """Refuse ``outputs`` that would write over ``inputs`` or cannot be written.

    ``inputs`` and ``outputs`` map what the user calls each path (``INPUT``, ``MODEL``,
    ``--out``, ``--checkpoint``, ``the report``) to the path or URL given.  Existing
    outputs are refused unless ``overwrite`` (checkpoints are checked by their command).
    Raises :class:`UsageError` naming the flag, the path, and what to do.
    """
    real_inputs = {
        name: real for name, path in inputs.items() if (real := real_location(path)) is not None
    }
    for flag, path in outputs.items():
        real = real_location(path)
        if real is None:
            raise UsageError(f"{flag} must be a local path, got {path}")
        for name, source in real_inputs.items():
            if overlaps(real, source):
                where = "is" if real == source else "holds" if source.startswith(real) else "is in"
                raise UsageError(
                    f"{flag} {path} {where} {name} {inputs[name]}; dask-em never writes over "
                    f"its inputs, with or without --overwrite: choose another {flag} path"
                )
    for flag, path in outputs.items():
        try:
            check_writable(real_location(path))
        except OSError as error:
            raise UsageError(f"{flag} {path}: {error.strerror or error}") from None
