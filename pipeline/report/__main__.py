import sys

from pipeline.report.cli import main

sys.exit(main())
