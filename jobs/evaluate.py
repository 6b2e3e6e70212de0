"""Pipeline task `evaluate`: `python -m jobs.evaluate --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["evaluate", *sys.argv[1:]])
