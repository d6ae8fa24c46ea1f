import logging
import os

logging.getLogger("lyco").setLevel(logging.ERROR)
logging.getLogger("LyCORIS").setLevel(logging.ERROR)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker: tiny ops on oversubscribed cores are much slower
    import torch

    torch.set_num_threads(1)
