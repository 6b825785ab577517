"""``python -m dask_em.cli``: the ``dask-em`` command line."""

import sys

from dask_em.cli import main

sys.exit(main())
