import sys

from photobot.cli import main

sys.exit(main())
