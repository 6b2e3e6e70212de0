"""Pipeline task `validate_interactions`: `python -m jobs.validate_interactions --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate-interactions", *sys.argv[1:]]))
