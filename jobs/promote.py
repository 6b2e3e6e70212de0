"""Pipeline task `promote`.

`python -m jobs.promote --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
