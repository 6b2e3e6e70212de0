"""Pipeline task `register`.

`python -m jobs.register --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["register", *sys.argv[1:]]))
