"""Pipeline task `validate_interactions`: `python -m jobs.validate_interactions --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["validate-interactions", *sys.argv[1:]])
