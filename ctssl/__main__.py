"""``python -m ctssl``: the same as the ``ctssl`` command."""

import sys

from ctssl.cli.main import main

sys.exit(main())
