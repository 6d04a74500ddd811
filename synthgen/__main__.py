"""``python -m synthgen`` = the ``synthgen`` command (also what ``torchrun -m synthgen`` runs)."""

import sys

from synthgen.cli import main

sys.exit(main())
