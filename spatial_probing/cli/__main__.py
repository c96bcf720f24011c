"""``python -m spatial_probing.cli``: the ``spatial-probing`` command from a checkout."""

import sys

from spatial_probing.cli import main

sys.exit(main())
