"""``python -m jetspec`` runs the command line."""

import sys

from jetspec.cli import main

sys.exit(main())
