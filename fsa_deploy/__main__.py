"""`python -m fsa_deploy VERB ...` is the `fsa` command."""

import sys

from fsa_deploy.cli import main

sys.exit(main())
