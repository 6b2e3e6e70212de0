"""Pipeline task `promote`.

`python -m jobs.promote --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["promote", *sys.argv[1:]])
