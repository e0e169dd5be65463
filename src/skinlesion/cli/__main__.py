import sys

from skinlesion.cli import main

sys.exit(main())
