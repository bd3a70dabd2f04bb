import sys

from kerasarch.cli import main

sys.exit(main())
