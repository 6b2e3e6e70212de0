"""Pipeline task `batch_inference`.

`python -m jobs.batch_inference --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`
"""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["batch-inference", *sys.argv[1:]])
