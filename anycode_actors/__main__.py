"""`python -m anycode_actors` is the same as the `anycode` console script."""

import sys

from anycode_actors.cli import main

sys.exit(main())
