"""Pipeline task `train_tokenizer`: `python -m jobs.train_tokenizer --ds YYYY-MM-DD [--dataset NAME] [--config F] [--set k=v]`."""

import sys

from tokenrec.cli import process_main

if __name__ == "__main__":
    process_main(["train-tokenizer", *sys.argv[1:]])
