"""Run by tests/test_ddp.py and bench/bench_scale.py, alone or under `mpirun -n 2`: trains a
small GPT for a few steps on seeded random tokens and leaves the final checkpoint in OUT_DIR.

    python tests/ddp_worker.py OUT_DIR [--ddp] [--fail-rank R] [--preset P] [--steps N]
                                       [--batch B] [--block T] [--vocab V]
"""
import argparse

import numpy as np

from minillm.train import TrainConfig, Trainer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--preset", default="gpt-tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=96)
    a = ap.parse_args()
    tokens = np.random.default_rng(0).integers(0, a.vocab, size=max(4000, 4 * a.batch * a.block))
    cfg = TrainConfig(out_dir=a.out_dir, model=a.preset, block_size=a.block, batch_size=a.batch,
                      max_steps=a.steps, lr=3e-3, warmup_steps=2, eval_interval=0,
                      checkpoint_interval=0, keep_checkpoints=1, progress="none", ddp=a.ddp,
                      dropout=0.0)
    trainer = Trainer(cfg, train_tokens=tokens.astype(np.uint16), val_tokens=None)
    if trainer.world.rank == a.fail_rank:
        raise RuntimeError(f"deliberate failure on rank {a.fail_rank}")
    trainer.train()


if __name__ == "__main__":
    main()
