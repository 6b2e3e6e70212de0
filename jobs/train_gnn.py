"""Pipeline task `train_gnn`: `python -m jobs.train_gnn --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["train-gnn", *sys.argv[1:]])
