"""``python -m drsformer_fast``: the ``drsformer-fast`` command (:func:`drsformer_fast.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
