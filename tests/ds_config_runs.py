"""Several `mcq-ds train` runs, one after another, in one launch: `deepspeed --num_gpus N tests/ds_config_runs.py
RUNS.json`, RUNS.json holding a list of `mcq-ds train` argument lists. One launch and one process group serve every
run (each builds its own model, loaders and DeepSpeed engine), so CI trains every shipped config for the start-up
cost of one. Used by tests/test_ds_configs.py."""
import argparse
import json
import logging
import sys

from mcq_ds.engine.config import add_arguments, resolve
from mcq_ds.engine.train import train


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = json.loads(open(sys.argv[-1]).read())  # the launcher puts --local_rank=N before it
    for argv in runs:
        parser = argparse.ArgumentParser()
        parser.add_argument("--local_rank", type=int)
        add_arguments(parser)
        train(resolve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
