"""Pipeline task `publish`.

`python -m jobs.publish --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
