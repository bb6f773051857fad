"""`python -m gdn_verify` is the `gdn-verify` command."""

import sys

from gdn_verify.cli import main

sys.exit(main())
