import sys

from drnet.cli import main

sys.exit(main())
