"""Pipeline task `train_llm`: `python -m jobs.train_llm --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-llm", *sys.argv[1:]]))
