"""``python -m hbm.cli``."""
import sys

from hbm.cli.main import main

sys.exit(main())
