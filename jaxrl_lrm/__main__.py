"""`python -m jaxrl_lrm` is the `jaxrl-lrm` command."""

import sys

from jaxrl_lrm.cli import main

sys.exit(main())
