import sys

from opdwatch.cli import main

sys.exit(main())
