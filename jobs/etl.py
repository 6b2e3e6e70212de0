"""Pipeline task `etl`: `python -m jobs.etl --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["etl", *sys.argv[1:]]))
