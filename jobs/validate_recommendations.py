"""Pipeline task `validate_recommendations`.

`python -m jobs.validate_recommendations --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["validate-recommendations", *sys.argv[1:]])
