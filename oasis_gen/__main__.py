"""``python -m oasis_gen``: the ``oasis-gen`` command."""

import sys

from oasis_gen.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
