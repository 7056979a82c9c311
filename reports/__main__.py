"""``python -m reports RESULTS_DIR [--baseline OLD_DIR] [--out report.html]``."""

import sys

from reports.cli import main

sys.exit(main())
