"""Training: a `Trainer` driven by a `TrainConfig`, checkpoints that resume bitwise exactly.

    from minillm.train import TrainConfig, Trainer
    cfg = TrainConfig(data="data/shakespeare/tokens", model="gpt-mini", max_steps=2000)
    Trainer(cfg).train()                     # metrics.jsonl and checkpoints/ under cfg.out_dir
    Trainer.resume("runs/gpt-mini").train()  # continues from the latest checkpoint

One step: `grad_accum` micro-batches of (batch_size, block_size) random windows of the training
tokens (minillm.data.TokenBatches), the mean loss's gradients summed over them, the global
gradient norm clipped to `grad_clip`, an AdamW step (2-D weights decay, biases and LayerNorm
gains do not) at the learning rate of linear warmup + cosine decay (minillm.optim).

Around the loop: the options are minillm/train_config.py, the checkpoint folder
minillm/checkpoint.py (restoring it makes a resumed run bitwise identical to an uninterrupted
one, same thread count), evaluation and metrics.jsonl minillm/metrics.py, the progress display
minillm/progress.py.
"""
import math
import os
import signal
import sys
import time

import minillm
from minillm import data as mdata
from minillm import distributed, nn, optim
from minillm import random as mrandom
from minillm.checkpoint import (CHECKPOINTS_DIR, CheckpointError, checkpoint_folder, find_checkpoint,  # noqa: F401
                                list_checkpoints, load_checkpoint, load_model, load_model_state,
                                prune_checkpoints, save_checkpoint)
from minillm.generate import sample_text  # noqa: F401  (a public name of this module before)
from minillm.metrics import (METRICS_FILE, append_metrics, evaluate, plot_metrics,  # noqa: F401
                             read_metrics, truncate_metrics)
from minillm.progress import Progress
from minillm.train_config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "find_checkpoint", "list_checkpoints", "load_model", "read_metrics", "plot_metrics",
           "evaluate", "sample_text"]


def _calibration_steps(cfg):
    """Steps timed to turn time_budget into max_steps: up to 30, within the warmup when it is
    long enough, so that the learning rates of the timed steps do not depend on max_steps."""
    return max(5, min(cfg.warmup_steps, 30))


class Trainer:
    """Trains a model on a prepared token folder, as set by a TrainConfig.

    Trainer(config) builds the model from the preset (vocab_size from the data), AdamW and the
    batch sampler; Trainer.resume(path, **overrides) rebuilds all of them from a checkpoint.
    train() runs to max_steps and returns the last evaluation. Attributes: model, optimizer,
    step, history (list of (step, loss) for every step run by this object).
    For tests and scripts the model, tokens and tokenizer may be passed in directly.
    """

    def __init__(self, config, model=None, train_tokens=None, val_tokens=None, tokenizer=None,
                 tokenizer_file=None):
        self.config = cfg = config.checked() if isinstance(config, TrainConfig) else \
            TrainConfig.from_dict(config)
        if cfg.num_threads:
            minillm.set_num_threads(cfg.num_threads)
        if train_tokens is None:
            if not cfg.data:
                raise ValueError("no training data: set `data` to a folder made by "
                                 "`minillm data prepare`")
            td = mdata.TokenData(cfg.data)
            train_tokens, val_tokens = td.split("train"), td.split("val")
            tokenizer = tokenizer or td.tokenizer()
            tok_json = os.path.join(td.tokenizer_path(), "tokenizer.json")
            tokenizer_file = tokenizer_file or (tok_json if os.path.exists(tok_json) else None)
            vocab_size = td.vocab_size
        else:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else int(train_tokens.max()) + 1
        self.tokenizer, self.tokenizer_file = tokenizer, tokenizer_file
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.byte_lengths = mdata.token_byte_lengths(tokenizer) if tokenizer is not None else None

        # ---- data parallel: rank 0's weights everywhere; only rank 0 writes files
        self.world = distributed.init() if cfg.ddp else distributed.world()
        if self.world.size > 1:
            self.world.shard(cfg.batch_size)        # refuses a batch that does not split evenly
        mrandom.manual_seed(cfg.seed)
        if model is None:
            from minillm.models import build_model
            model = build_model(cfg.model, vocab_size=vocab_size, **cfg.model_overrides())
        self.model = model
        self.world.broadcast_(list(model.parameters()))
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"the model's vocab_size {model.config.vocab_size} is smaller than the "
                             f"data's {vocab_size}")
        self.block_size = min(cfg.block_size or model.config.block_size, model.config.block_size)
        self.optimizer = self._make_optimizer()
        # the batch stream has its own seed, so changing the model leaves the data order alone
        self.batches = mdata.TokenBatches(train_tokens, cfg.batch_size, self.block_size,
                                          seed=cfg.seed + 1)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.history = []
        self.last_eval = None
        self._stop = False
        if self.world.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)

    def _check_fresh_out_dir(self):
        """A new run must not mix its metrics and checkpoints with another run's."""
        if not self.world.is_main:
            return
        old = list_checkpoints(self.config.out_dir)
        if old:
            raise ValueError(f"{self.config.out_dir} already holds checkpoints of a run (up to step "
                             f"{old[-1][0]}); continue it with --resume {self.config.out_dir}, or "
                             f"choose another out_dir (or delete that folder)")
        metrics = os.path.join(self.config.out_dir, METRICS_FILE)
        if os.path.exists(metrics):
            os.remove(metrics)

    def _make_optimizer(self):
        cfg = self.config
        if hasattr(self.model, "configure_optimizers"):
            return self.model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                                   cfg.eps)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if rest:
            groups.append({"params": rest, "weight_decay": 0.0})
        return optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, path, **overrides):
        """A Trainer in the exact state of a checkpoint (a checkpoint folder, or a run folder:
        its latest checkpoint). `overrides` replace training options (e.g. max_steps=...);
        changing anything but the run length, intervals or output breaks bitwise equality with
        an uninterrupted run."""
        from minillm.models import model_from_config
        folder = find_checkpoint(path)
        ckpt = load_checkpoint(folder)
        train_cfg = dict(ckpt["config"].get("train", {}))
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.basename(parent) == CHECKPOINTS_DIR:
            # the run folder the checkpoint sits in, wherever the run was moved to
            train_cfg["out_dir"] = os.path.dirname(parent)
        train_cfg.update(overrides)
        cfg = TrainConfig.from_dict(train_cfg, source=os.path.join(folder, "config.json"))
        model = model_from_config(ckpt["config"]["model"])
        load_model_state(model, ckpt["model"], os.path.join(folder, "model.safetensors"))
        trainer = cls(cfg, model=model)
        trainer.load_state(ckpt)
        return trainer

    def load_state(self, ckpt):
        """Restore optimizer, step, RNG and data position from a load_checkpoint() dict (the
        weights are loaded by the caller)."""
        folder = ckpt["path"]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {folder}: optimizer.safetensors: {e}") from None
        st = ckpt["trainer_state"]
        try:
            self.step = int(st["step"])
            self.tokens_seen = int(st["tokens_seen"])
            self.elapsed = float(st["elapsed"])
            mrandom.default_generator().set_state(st["rng"]["default"])
            self.batches.load_state_dict(st["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {folder}: trainer_state.json: bad or missing "
                                  f"field ({e})") from None
        truncate_metrics(os.path.join(self.config.out_dir, METRICS_FILE), self.step)

    # ------------------------------------------------------------------ saving
    def trainer_state(self):
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                "rng": {"default": mrandom.default_generator().get_state()},
                "data": self.batches.state_dict(),
                "last_eval": self.last_eval}

    def save(self):
        """Write checkpoints/step_<step>/ (atomically) and drop all but the last
        keep_checkpoints; returns the folder (None on ranks other than 0, which write nothing)."""
        if not self.world.is_main:
            return None
        cfg = self.config
        folder = checkpoint_folder(cfg.out_dir, self.step)
        config = {"model": self.model.config.to_dict(), "train": cfg.to_dict(),
                  "minillm_version": minillm.__version__}
        save_checkpoint(folder, self.model, self.optimizer, self.trainer_state(), config,
                        self.tokenizer_file)
        prune_checkpoints(cfg.out_dir, cfg.keep_checkpoints)
        return folder

    # ------------------------------------------------------------------ the loop
    def lr_at(self, step):
        cfg = self.config
        decay = cfg.lr_decay_steps or cfg.max_steps
        return optim.cosine_with_warmup(step, cfg.lr, cfg.warmup_steps, max(decay, cfg.warmup_steps),
                                        cfg.min_lr)

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm, lr)."""
        cfg = self.config
        lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = 0.0
        world = self.world
        for _ in range(cfg.grad_accum):
            x, y = self.batches.next()
            if world.size > 1:          # every rank draws the global batch and keeps its shard
                lo, hi = world.shard(cfg.batch_size)
                x, y = x[lo:hi], y[lo:hi]
            with minillm.autocast(dtype=cfg.dtype):     # bf16 products when cfg.dtype is bf16
                _, loss = self.model(x, y)
            total += float(loss.item())
            (loss if cfg.grad_accum == 1 else loss * (1.0 / cfg.grad_accum)).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if world.size > 1:
            world.allreduce_mean_([p.grad for p in params])
            total = world.allreduce_mean_float(total)
        norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        self.tokens_seen += cfg.grad_accum * cfg.batch_size * self.block_size
        return total / cfg.grad_accum, norm, lr

    def evaluate(self, max_batches=-1):
        """Validation loss, perplexity and bits per byte (see the module docstring)."""
        cfg = self.config
        if max_batches == -1:
            max_batches = cfg.eval_batches or None
        return evaluate(self.model, self.val_tokens, cfg.batch_size, self.block_size,
                        self.byte_lengths, max_batches)

    def _log(self, record):
        if self.world.is_main:
            append_metrics(self.config.out_dir, record)

    def _on_sigint(self, signum, frame):
        if self._stop:          # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self._stop = True

    def train(self):
        """Run from the current step to max_steps (or until max_time, or Ctrl-C: each saves a
        checkpoint first). Returns the last validation result dict (or None without val data)."""
        if self.step == 0:
            self._check_fresh_out_dir()
        self.model.train()
        # lines=0: without a bar, _log_step prints the step lines itself
        progress = Progress(self.config.max_steps, "training", unit="step", initial=self.step,
                            mode=self.config.progress if self.world.is_main else "none",
                            stream=sys.stdout, lines=0)
        use_signal = _in_main_thread()
        prev_handler = signal.signal(signal.SIGINT, self._on_sigint) if use_signal else None
        self._stop, self.interrupted = False, False
        clock = _Clock(self.elapsed, self.tokens_seen)
        try:
            if self.step == 0:
                progress.log(self._describe())
            while self.step < self.config.max_steps:
                loss, norm, lr = self.train_step()
                self.history.append((self.step, loss))
                self.elapsed = clock.elapsed()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"step {self.step}: the loss is {loss}; lower lr "
                                             f"(now {self.config.lr}) or check the data")
                progress.update(1, postfix=f"loss {loss:.4f}")
                self._log_step(loss, norm, lr, clock, progress)
                if (self.config.time_budget and clock.t_cal
                        and self.step == _calibration_steps(self.config) + 1):
                    self._fit_time_budget(time.perf_counter() - clock.t_cal, progress)
                if self.step == 1:
                    clock.t_cal = time.perf_counter()     # step 1 warms caches: time the next ones
                cfg = self.config
                last = self.step == cfg.max_steps
                out_of_time = bool(cfg.max_time) and self.elapsed >= cfg.max_time
                if self.val_tokens is not None and (
                        last or out_of_time or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                    self._run_eval(progress, final=last)
                if self.world.any_true(self._stop or out_of_time):
                    self.interrupted = True
                    why = "interrupted" if self._stop else f"max_time {cfg.max_time:g} s reached"
                    progress.log(f"{why} at step {self.step}: saved {self.save()}; continue with "
                                 f"`minillm train --resume {cfg.out_dir}`")
                    break
                if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    self.save()
        finally:
            progress.close()
            if use_signal:
                signal.signal(signal.SIGINT, prev_handler)
        return self.last_eval

    def _describe(self):
        cfg = self.config
        steps = (f"about {cfg.time_budget:g} s" if cfg.time_budget else f"{cfg.max_steps} steps")
        return (f"training {type(self.model).__name__} with {self.model.num_params():,} parameters "
                f"on {len(self.train_tokens):,} tokens: {steps} of {cfg.grad_accum} x "
                f"{cfg.batch_size} x {self.block_size} tokens, {minillm.get_num_threads()} threads")

    def _log_step(self, loss, norm, lr, clock, progress):
        """A metrics.jsonl line (and a printed one without a bar) every log_interval steps."""
        cfg = self.config
        if self.step % cfg.log_interval and self.step != cfg.max_steps:
            return
        tps = clock.tokens_per_s(self.tokens_seen)
        self._log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                   "tokens_per_s": tps, "elapsed": self.elapsed})
        if progress.bar is None:
            progress.log(f"step {self.step:6d} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                         f"{norm:.3f} | {tps:,.0f} tok/s | {self.elapsed:.0f} s")

    def _fit_time_budget(self, seconds, progress):
        """Set max_steps (and the cosine's length) so that training, evaluations included,
        takes about time_budget seconds at the speed of the calibration steps. The resolved
        max_steps goes into the checkpoints, so a resumed run follows the same schedule."""
        cfg = self.config
        per_step = self.world.broadcast_float(seconds) / _calibration_steps(cfg)  # same steps on all ranks
        # an evaluation batch (batch_size windows, no backward) costs about a third of a
        # training micro-batch
        per_eval_batch = per_step / (3 * cfg.grad_accum)
        windows = (len(self.val_tokens) - 1) // self.block_size if self.val_tokens is not None else 0
        all_batches = -(-windows // cfg.batch_size)
        eval_each = min(cfg.eval_batches or all_batches, all_batches) * per_eval_batch
        final_eval = min(cfg.final_eval_batches or all_batches, all_batches) * per_eval_batch
        left = cfg.time_budget - self.elapsed - final_eval
        per_step_all = per_step + (eval_each / cfg.eval_interval if cfg.eval_interval else 0.0)
        steps = max(self.step + 1, self.step + int(left / per_step_all))
        self.config = cfg.replace(max_steps=steps, lr_decay_steps=None, time_budget=0.0)
        progress.log(f"{per_step * 1000:.0f} ms per step: {steps} steps fit in the time budget "
                     f"of {cfg.time_budget:g} s")
        progress.set_total(steps)

    def _run_eval(self, progress, final=False):
        t0 = time.perf_counter()
        res = self.evaluate(max_batches=(self.config.final_eval_batches or None) if final else -1)
        self.last_eval = res
        rec = {"step": self.step, "val_loss": res["loss"], "val_ppl": res["ppl"],
               "val_tokens": res["tokens"], "elapsed": self.elapsed,
               "eval_seconds": time.perf_counter() - t0}
        if "bpb" in res:
            rec["val_bpb"] = res["bpb"]
        self._log(rec)
        bpb = f" | val bits/byte {res['bpb']:.4f}" if "bpb" in res else ""
        progress.log(f"step {self.step:6d} | val loss {res['loss']:.4f} | val ppl {res['ppl']:.2f}{bpb}")
        return res


class _Clock:
    """Elapsed seconds (continuing a resumed run's) and tokens/s between log lines."""

    def __init__(self, elapsed, tokens):
        self.start, self.elapsed0 = time.perf_counter(), elapsed
        self.t_log, self.tokens_log = self.start, tokens
        self.t_cal = None

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.start

    def tokens_per_s(self, tokens):
        now = time.perf_counter()
        tps = (tokens - self.tokens_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.tokens_log = now, tokens
        return tps


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
