"""Run by tests/test_ddp.py, alone or under `mpirun -n 2`: trains a small GPT for a few steps
on seeded random tokens and leaves the final checkpoint in OUT_DIR.

    python tests/ddp_worker.py OUT_DIR [--ddp] [--fail-rank R]
"""
import sys

import numpy as np

from minillm.train import TrainConfig, Trainer


def main(argv):
    out_dir = argv[0]
    ddp = "--ddp" in argv
    fail_rank = int(argv[argv.index("--fail-rank") + 1]) if "--fail-rank" in argv else -1
    tokens = np.random.default_rng(0).integers(0, 96, size=4000).astype(np.uint16)
    cfg = TrainConfig(out_dir=out_dir, model="gpt-tiny", block_size=32, batch_size=8, max_steps=10,
                      lr=3e-3, warmup_steps=2, eval_interval=0, checkpoint_interval=0,
                      keep_checkpoints=1, progress="none", ddp=ddp, dropout=0.0)
    trainer = Trainer(cfg, train_tokens=tokens, val_tokens=None)
    if trainer.world.rank == fail_rank:
        raise RuntimeError(f"deliberate failure on rank {fail_rank}")
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1:])
