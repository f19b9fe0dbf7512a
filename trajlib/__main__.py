"""``python -m trajlib`` is the ``trajlib`` command."""

import sys

from trajlib.cli import main

sys.exit(main())
