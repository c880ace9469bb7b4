import sys

from pipeline.train.cli import main

sys.exit(main())
