"""Pipeline task `train_llm`: `python -m jobs.train_llm --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["train-llm", *sys.argv[1:]])
