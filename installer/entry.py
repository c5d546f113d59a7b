"""Entry script frozen by PyInstaller: the same `xmedgpt` command as the console script."""

import multiprocessing
import sys

from ui.shell.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
