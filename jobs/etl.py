"""Pipeline task `etl`: `python -m jobs.etl --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["etl", *sys.argv[1:]])
