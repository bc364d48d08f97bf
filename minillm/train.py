"""Training: a `Trainer` driven by a `TrainConfig`, checkpoints that resume bitwise exactly.

    from minillm.train import TrainConfig, Trainer
    cfg = TrainConfig(data="data/shakespeare/tokens", model="gpt-mini", max_steps=2000)
    Trainer(cfg).train()                     # metrics.jsonl and checkpoints/ under cfg.out_dir
    Trainer.resume("runs/gpt-mini").train()  # continues from the latest checkpoint

One step: `grad_accum` micro-batches of (batch_size, block_size) random windows of the training
tokens (minillm.data.TokenBatches), the mean loss's gradients summed over them, the global
gradient norm clipped to `grad_clip`, an AdamW step (2-D weights decay, biases and LayerNorm
gains do not; or with optimizer "muon", Muon for the hidden 2-D weights and AdamW for the rest)
at the learning rate of linear warmup + cosine decay over max_steps, or with `time_budget`
warmup + constant + linear cooldown over the last `cooldown_frac` of the budget, the run
stopping when the budget is spent (minillm.optim).

Around the loop: the options are minillm/train_config.py, the checkpoint folder
minillm/checkpoint.py (restoring it makes a resumed run bitwise identical to an uninterrupted
one, on any thread count), evaluation and metrics.jsonl minillm/metrics.py, the progress display
minillm/progress.py.

What a run never does: start with data it will fail on later (the checks of `_preflight` run
before the first step: windows fit both splits, every id is inside the vocabulary, the
tokenizer matches the data, the run folder is writable); lose trained steps to an error (one
after the first step saves a checkpoint first, then is raised with a note saying so); share
its run folder with another live trainer (an OS lock on RUN/.lock); continue from a
checkpoint with options that do not fit it (Trainer.resume names each one).
"""
import math
import os
import signal
import sys
import time
import weakref

import minillm
from minillm import data as mdata
from minillm import amp, distributed, nn, optim
from minillm import random as mrandom
from minillm.checkpoint import (CHECKPOINTS_DIR, CheckpointError, checkpoint_folder, find_checkpoint,  # noqa: F401
                                list_checkpoints, load_checkpoint, load_model, load_model_state,
                                prune_checkpoints, remove_stale_temporaries, save_checkpoint)
from minillm.generate import sample_text  # noqa: F401  (a public name of this module before)
from minillm.metrics import (METRICS_FILE, append_metrics, evaluate, plot_metrics,  # noqa: F401
                             read_metrics, truncate_metrics)
from minillm.progress import Progress
from minillm.train_config import TrainConfig
from minillm.utils import FolderLock

LOCK_FILE = ".lock"

# What --resume may change. The weights and the data order fix these (never changeable; nor
# optimizer: the optimizer state of one does not fit the other):
FIXED_OPTIONS = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "model_args", "seed",
                 "optimizer")
# These change only what is measured, logged, kept or printed, or when the run stops (free);
# max_steps is free while the learning-rate schedule stays the same (its cosine ends at
# lr_decay_steps, or at max_steps when that is not set; a time-budgeted run's schedule does not
# depend on max_steps):
FREE_OPTIONS = ("max_steps", "eval_interval", "eval_batches", "final_eval_batches", "log_interval",
                "checkpoint_interval", "keep_checkpoints", "max_time", "num_threads", "tune_threads",
                "progress", "sample_tokens", "sample_prompt", "temperature", "top_k", "ddp", "data",
                "out_dir")
# The rest (lr, min_lr, warmup_steps, lr_decay_steps, weight_decay, betas, eps, grad_clip,
# muon_lr, muon_momentum, muon_weight_decay, time_budget, cooldown_frac, batch_size, grad_accum, dtype) change the
# optimisation: refused unless allow_changes, and then the run is no longer equal to any
# uninterrupted one.

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "find_checkpoint", "list_checkpoints", "load_model", "read_metrics", "plot_metrics",
           "evaluate", "sample_text", "resumed_config"]


class Trainer:
    """Trains a model on a prepared token folder, as set by a TrainConfig.

    Trainer(config) builds the model from the preset (vocab_size from the data), AdamW and the
    batch sampler; Trainer.resume(path, **overrides) rebuilds all of them from a checkpoint.
    train() runs to max_steps and returns the last evaluation. Attributes: model, optimizer,
    step, history (list of (step, loss) for every step run by this object).
    For tests and scripts the model, tokens and tokenizer may be passed in directly, and
    time_fn (seconds, default time.perf_counter) is the clock of elapsed and time_budget.
    """

    def __init__(self, config, model=None, train_tokens=None, val_tokens=None, tokenizer=None,
                 tokenizer_file=None, data_fingerprint=None, time_fn=None):
        self.config = cfg = config.checked() if isinstance(config, TrainConfig) else \
            TrainConfig.from_dict(config)
        if cfg.num_threads:
            minillm.set_num_threads(cfg.num_threads)
        self.world = distributed.init() if cfg.ddp else distributed.world()
        self._lock = None
        if self.world.is_main:
            self._take_run_folder()
        self.fingerprint = None
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
            self._check_data(td, tokenizer, data_fingerprint)
        else:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else int(train_tokens.max()) + 1
            if tokenizer is not None:
                self.fingerprint = mdata.tokenizer_fingerprint(tokenizer)
        if val_tokens is not None and len(val_tokens) == 0:
            val_tokens = None           # prepared with --val-fraction 0: no validation split
        self.tokenizer, self.tokenizer_file = tokenizer, tokenizer_file
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.byte_lengths = mdata.token_byte_lengths(tokenizer) if tokenizer is not None else None

        # ---- data parallel: rank 0's weights everywhere; only rank 0 writes files
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
        self._preflight()
        self.product_times = None       # (float32 s, bf16 s) when dtype "auto" timed them
        if cfg.dtype == "auto":
            self.config = cfg = cfg.replace(dtype=self._faster_dtype())
        self.optimizer = self._make_optimizer()
        # the batch stream has its own seed, so changing the model leaves the data order alone
        self.batches = mdata.TokenBatches(train_tokens, cfg.batch_size, self.block_size,
                                          seed=cfg.seed + 1)
        self.step = 0
        self._saved_step = 0            # the step of the newest checkpoint on disk (0: none)
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.history = []
        self.last_eval = None
        self._stop = False
        self.interrupted = False        # stopped early (Ctrl-C or max_time) with a checkpoint
        self.stopped_by_user = False    # ... by Ctrl-C
        self.changes = []               # options a resume changed (see resume)
        self.time_fn = time_fn or time.perf_counter

    # ------------------------------------------------------------------ checks before step 1
    def _take_run_folder(self):
        """Create out_dir, lock it against other trainers (RUN/.lock, held while this object
        lives or until train() returns), and remove temporaries of killed checkpoint writers."""
        out = self.config.out_dir
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"out_dir {out}: is a file, not a folder")
        try:
            os.makedirs(out, exist_ok=True)
            lock = FolderLock(os.path.join(out, LOCK_FILE), f"run folder {out}").acquire()
        except OSError as e:
            raise ValueError(f"out_dir {out}: cannot write there ({e.strerror or e})") from None
        self._lock = lock
        weakref.finalize(self, lock.release)
        remove_stale_temporaries(os.path.join(out, CHECKPOINTS_DIR))

    def _check_data(self, td, tokenizer, expected_fingerprint):
        """The token folder fits its tokenizer (and the run's, when resuming) and holds no id
        outside the vocabulary."""
        if int(tokenizer.vocab_size) != td.vocab_size:
            raise ValueError(f"{td.path}: meta.json says vocab_size {td.vocab_size}, its tokenizer "
                             f"({td.tokenizer_path()}) has {tokenizer.vocab_size} ids")
        actual = mdata.tokenizer_fingerprint(tokenizer)
        recorded = td.meta.get("tokenizer_fingerprint")
        if recorded and recorded != actual:
            raise ValueError(f"{td.tokenizer_path()}: is not the tokenizer these tokens were made "
                             f"with (fingerprint {actual[:19]}, meta.json says {recorded[:19]})")
        if expected_fingerprint and expected_fingerprint != actual:
            raise ValueError(f"data {td.path}: was tokenized with another tokenizer than the run "
                             f"being resumed (fingerprint {actual[:19]}, the run's "
                             f"{expected_fingerprint[:19]}); resume on the run's own data, or start "
                             f"a new run")
        self.fingerprint = actual
        for name in td.meta["splits"]:
            td.check_ids(name)

    def _preflight(self):
        """Everything the run will need later, checked before the first step: windows of
        block_size fit the training split and the validation split, the final sample can be
        made. ValueError names the option, the file and the sizes."""
        cfg, T = self.config, self.block_size
        where = (lambda split: f"{cfg.data}/{split}.bin") if cfg.data else (lambda split: f"{split} tokens")
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if tokens is not None and len(tokens) < T + 1:
                raise ValueError(f"{where(split)}: {len(tokens)} tokens cannot fill one window of "
                                 f"block_size {T} (+1 target); use --block-size {max(1, len(tokens) - 1)} "
                                 f"or less, or more text")
        if cfg.sample_tokens:
            from minillm.generate import MAX_NEW_TOKENS
            if self.tokenizer is None:
                raise ValueError("sample_tokens is set but the data has no tokenizer to print text with")
            if cfg.sample_tokens > MAX_NEW_TOKENS:
                raise ValueError(f"sample_tokens must be at most {MAX_NEW_TOKENS}, got {cfg.sample_tokens}")
            self.tokenizer.encode(cfg.sample_prompt)

    def _faster_dtype(self):
        """dtype "auto": "bf16" or "float32", whichever runs this model's weight products (at
        its batch) faster on this CPU (amp.faster_dtype); under DDP rank 0's choice everywhere.
        The config keeps the choice, so a resume trains on with the same products."""
        cfg = self.config
        M = cfg.batch_size // self.world.size * self.block_size
        shapes = sorted({(M,) + tuple(m.weight.shape[::-1]) for m in self.model.modules()
                         if isinstance(m, nn.Linear)})
        dtype, f32, bf16 = amp.faster_dtype(shapes)
        if f32 is not None:
            self.product_times = (f32, bf16)
        return "bf16" if self.world.broadcast_float(dtype == "bfloat16") else "float32"

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
        if cfg.optimizer == "muon":
            # Muon for the hidden 2-D weights; AdamW for the rest: embedding tables and the LM
            # head decay by weight_decay, gains and biases do not (as configure_optimizers)
            matrices, other = optim.muon_param_groups(
                (n, p) for n, p in self.model.named_parameters() if p.requires_grad)
            groups = [{"params": matrices, "use_muon": True, "weight_decay": cfg.muon_weight_decay}]
            for params, wd in (([p for p in other if p.ndim >= 2], cfg.weight_decay),
                               ([p for p in other if p.ndim < 2], 0.0)):
                if params:
                    groups.append({"params": params, "use_muon": False, "weight_decay": wd})
            return optim.Muon(groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                              nesterov=cfg.muon_momentum > 0, adamw_lr=cfg.lr,
                              adamw_betas=(cfg.beta1, cfg.beta2), adamw_eps=cfg.eps)
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
    def resume(cls, path, allow_changes=False, extend_steps=None, time_fn=None, **overrides):
        """A Trainer in the exact state of a checkpoint (a checkpoint folder, or a run folder:
        its latest checkpoint). `overrides` replace training options; resumed_config() refuses
        those that do not fit the checkpoint (see FIXED_OPTIONS, FREE_OPTIONS); `trainer.changes`
        lists the options that changed: (option, old value, new value).
        extend_steps=N trains N steps past the run's max_steps at the schedule's final learning
        rate (min_lr). Data tokenized by another tokenizer than the run's is refused."""
        from minillm.models import model_from_config
        path = os.fspath(path)
        try:
            folder = find_checkpoint(path)
        except ValueError:
            folder = None           # maybe a run folder whose first checkpoint is being written
        if folder is None:
            run_dir = path if os.path.isdir(path) else None
        else:
            parent = os.path.dirname(os.path.abspath(folder))
            run_dir = os.path.dirname(parent) if os.path.basename(parent) == CHECKPOINTS_DIR else None
        # lock the run folder before reading: a live trainer may be replacing its checkpoints
        target = overrides.get("out_dir") or run_dir
        lock = None
        if target is not None and distributed.world().is_main and _launcher_rank() == 0:
            os.makedirs(target, exist_ok=True)
            lock = FolderLock(os.path.join(target, LOCK_FILE), f"run folder {target}").acquire()
        try:
            folder = find_checkpoint(path)          # the latest, now that nobody writes one
            ckpt = load_checkpoint(folder)
            saved = ckpt["config"].get("train") if isinstance(ckpt["config"], dict) else None
            if not isinstance(saved, dict) or not isinstance(ckpt["config"].get("model"), dict):
                raise CheckpointError(f"checkpoint {folder}: config.json lacks the \"train\" or "
                                      f"\"model\" options")
            saved = dict(saved)
            if run_dir is not None:
                saved["out_dir"] = run_dir      # the run folder, wherever the run was moved to
            cfg, changes = resumed_config(saved, overrides, allow_changes, extend_steps,
                                          source=os.path.join(folder, "config.json"))
            data_info = ckpt["config"].get("data") or {}
            fingerprint = data_info.get("tokenizer_fingerprint") if isinstance(data_info, dict) else 0
            if fingerprint is not None and not isinstance(fingerprint, str):
                raise CheckpointError(f"checkpoint {folder}: config.json: \"data\" should be "
                                      f"{{\"tokenizer_fingerprint\": str}}, got {data_info!r}")
            if not fingerprint and ckpt["tokenizer"]:
                from minillm.checkpoint import read_tokenizer
                fingerprint = mdata.tokenizer_fingerprint(read_tokenizer(ckpt["tokenizer"]))
            try:
                model = model_from_config(ckpt["config"]["model"])
            except (TypeError, ValueError, KeyError, ArithmeticError) as e:
                raise CheckpointError(f"checkpoint {folder}: config.json: the model config does not "
                                      f"build a model ({type(e).__name__}: {e})") from None
            load_model_state(model, ckpt["model"], os.path.join(folder, "model.safetensors"))
            trainer = cls(cfg, model=model, data_fingerprint=fingerprint, time_fn=time_fn)
            trainer.load_state(ckpt)
            trainer.changes = changes
        finally:
            if lock is not None:
                lock.release()          # the trainer holds its own count of the lock now
        return trainer

    def load_state(self, ckpt):
        """Restore optimizer, step, RNG and data position from a load_checkpoint() dict (the
        weights are loaded by the caller)."""
        folder = ckpt["path"]
        options = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {folder}: optimizer.safetensors: {e}") from None
        # the options come from this run's config (they differ from the checkpoint's only when
        # --allow-changes took new ones); the state tensors and step counts from the checkpoint
        for g, own in zip(self.optimizer.param_groups, options):
            g.update(own)
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
        self._saved_step = self.step
        if self.world.is_main:
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
                  "data": {"tokenizer_fingerprint": self.fingerprint},
                  "minillm_version": minillm.__version__}
        save_checkpoint(folder, self.model, self.optimizer, self.trainer_state(), config,
                        self.tokenizer_file)
        self._saved_step = self.step
        prune_checkpoints(cfg.out_dir, cfg.keep_checkpoints)
        return folder

    # ------------------------------------------------------------------ the loop
    def budget_fraction(self):
        """The part of time_budget used so far (self.elapsed / time_budget, at most 1)."""
        return min(1.0, self.elapsed / self.config.time_budget)

    def budget_spent(self):
        return bool(self.config.time_budget) and self.elapsed >= self.config.time_budget

    def lr_at(self, step, fraction=None):
        """The learning rate of step `step` (0-based): the cosine over max_steps, or with
        time_budget warmup_constant_cooldown at `fraction` of the budget (default: now)."""
        cfg = self.config
        if cfg.time_budget:
            fraction = self.budget_fraction() if fraction is None else fraction
            return optim.warmup_constant_cooldown(step, fraction, cfg.lr, cfg.warmup_steps,
                                                  cfg.cooldown_frac, cfg.min_lr)
        decay = cfg.lr_decay_steps or cfg.max_steps
        return optim.cosine_with_warmup(step, cfg.lr, cfg.warmup_steps, max(decay, cfg.warmup_steps),
                                        cfg.min_lr)

    def _set_lr(self, lr):
        """Every param group takes `lr`; Muon's groups take muon_lr scaled by the same schedule
        (muon_lr * lr / cfg.lr)."""
        cfg = self.config
        muon_lr = cfg.muon_lr * (lr / cfg.lr if cfg.lr > 0 else 1.0)
        for g in self.optimizer.param_groups:
            g["lr"] = muon_lr if g.get("use_muon") else lr

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm, lr)."""
        cfg = self.config
        lr = self.lr_at(self.step)
        self._set_lr(lr)
        total = 0.0
        world = self.world
        # a step that fails before the optimizer step leaves the state of the step before it
        resumable = hasattr(self.batches, "state_dict")
        data_state = self.batches.state_dict() if resumable else None
        rng_state = mrandom.default_generator().get_state()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        try:
            for _ in range(cfg.grad_accum):
                x, y = self.batches.next()
                if world.size > 1:          # every rank draws the global batch and keeps its shard
                    lo, hi = world.shard(cfg.batch_size)
                    x, y = x[lo:hi], y[lo:hi]
                with minillm.autocast(dtype=cfg.dtype):     # bf16 products when cfg.dtype is bf16
                    _, loss = self.model(x, y)
                total += float(loss.item())
                (loss if cfg.grad_accum == 1 else loss * (1.0 / cfg.grad_accum)).backward()
            if world.size > 1:
                world.allreduce_mean_([p.grad for p in params])
                total = world.allreduce_mean_float(total)
            norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if not (math.isfinite(total) and math.isfinite(norm)):
                what = f"loss is {total / cfg.grad_accum}" if not math.isfinite(total) else \
                    f"gradient norm is {norm}"
                raise FloatingPointError(f"step {self.step + 1}: the {what}; the weights were not "
                                         f"updated. Lower lr (now {cfg.lr}) and continue with "
                                         f"--resume {cfg.out_dir} --lr ... --allow-changes, or "
                                         f"check the data")
        except BaseException:
            self.optimizer.zero_grad()
            if resumable:
                self.batches.load_state_dict(data_state)
            mrandom.default_generator().set_state(rng_state)
            raise
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
        if self.world.is_main and self._lock is None:
            self._take_run_folder()
        if self.step == 0:
            self._check_fresh_out_dir()
        self.model.train()
        # lines=0: without a bar, _log_step prints the step lines itself
        progress = Progress(self.config.max_steps, "training", unit="step", initial=self.step,
                            mode=self.config.progress if self.world.is_main else "none",
                            stream=sys.stdout, lines=0)
        use_signal = _in_main_thread()
        prev_handler = signal.signal(signal.SIGINT, self._on_sigint) if use_signal else None
        self._stop, self.interrupted, self.stopped_by_user = False, False, False
        clock = _Clock(self.elapsed, self.tokens_seen, self.time_fn)
        # DDP ranks keep their count: a rank that changed it alone would wait for the others
        threads = _ThreadTuner(minillm.get_num_threads(), self.time_fn) \
            if self.config.tune_threads and self.world.size == 1 else None
        try:
            if self.step == 0:
                progress.log(self._describe())
            first_step = self.step
            # with time_budget the run ends when the elapsed time (restored on resume) reaches
            # the budget: a step started before then finishes, so it overruns by under a step
            # and an evaluation, whatever the load did to the speed
            while self.step < self.config.max_steps and not self.budget_spent():
                if threads is not None:
                    threads.start_step()
                loss, norm, lr = self.train_step()
                if threads is not None:
                    threads.end_step()
                self.history.append((self.step, loss))
                self._tick(clock)
                progress.update(1, postfix=f"loss {loss:.4f}")
                self._log_step(loss, norm, lr, clock, progress)
                cfg = self.config
                if cfg.time_budget and self.step % cfg.log_interval == 0:
                    self._estimate_total(clock, first_step, progress)
                last = self.step == cfg.max_steps or self.budget_spent()
                out_of_time = bool(cfg.max_time) and self.elapsed >= cfg.max_time
                if self.val_tokens is not None and (
                        last or out_of_time or (cfg.eval_interval and self.step % cfg.eval_interval == 0)):
                    self._run_eval(progress, final=last)
                    if cfg.time_budget and not last:     # the evaluation's time counts too
                        self._tick(clock)
                        if self.budget_spent():         # and it spent the budget: the end
                            last = True
                            self._run_eval(progress, final=True)
                if self.world.any_true(self._stop or out_of_time):
                    self.interrupted = True
                    self.stopped_by_user = self._stop
                    why = "interrupted" if self._stop else f"max_time {cfg.max_time:g} s reached"
                    progress.log(f"{why} at step {self.step}: saved {self.save()}; continue with "
                                 f"`minillm train --resume {cfg.out_dir}`")
                    break
                if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    self.save()
                if last:
                    break
        except Exception as e:
            reported = self._saved_before(e)
            if reported is e:
                raise
            raise reported from e
        finally:
            if threads is not None:
                threads.restore()
            progress.close()
            if use_signal:
                signal.signal(signal.SIGINT, prev_handler)
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return self.last_eval

    def _tick(self, clock):
        """self.elapsed = the clock (the same number on every rank: the schedule and the stop of
        a time-budgeted run follow it)."""
        self.elapsed = clock.elapsed()
        if self.config.time_budget and self.world.size > 1:
            self.elapsed = self.world.broadcast_float(self.elapsed)

    def _estimate_total(self, clock, first_step, progress):
        """The progress bar's total for a time-budgeted run: the steps done plus those that fit
        in the budget left at this session's mean speed (a display only)."""
        seconds = self.elapsed - clock.elapsed0
        if self.step > first_step and seconds > 0:
            left = max(0.0, self.config.time_budget - self.elapsed)
            per_step = seconds / (self.step - first_step)
            progress.set_total(min(self.config.max_steps, self.step + math.ceil(left / per_step)))

    def _saved_before(self, error):
        """`error` (raised after training started) with a note, once the steps not yet on disk
        are saved: a checkpoint first, then the report, so no trained step is lost."""
        if not self.world.is_main or self.step <= self._saved_step:
            return error
        try:
            folder = self.save()
        except Exception as e:      # the disk may be what failed: say so, keep the first error
            note = f"saving a checkpoint of step {self.step} failed too: {e}"
        else:
            note = (f"saved a checkpoint of step {self.step} first ({folder}); continue with "
                    f"`minillm train --resume {self.config.out_dir}`")
        try:
            return type(error)(f"{error}; {note}")
        except Exception:
            return RuntimeError(f"{type(error).__name__}: {error}; {note}")

    def _describe(self):
        cfg = self.config
        steps = (f"{cfg.time_budget:g} s (cooldown over the last {cfg.cooldown_frac:.0%})"
                 if cfg.time_budget else f"{cfg.max_steps} steps")
        return (f"training {type(self.model).__name__} with {self.model.num_params():,} parameters "
                f"on {len(self.train_tokens):,} tokens: {steps} of {cfg.grad_accum} x "
                f"{cfg.batch_size} x {self.block_size} tokens, {minillm.get_num_threads()} threads, "
                f"{cfg.dtype} products{self._timed()}")

    def _timed(self):
        """What dtype "auto" measured, for the first line of a run"""
        if not self.product_times:
            return ""
        f32, bf16 = self.product_times
        return f" (auto: the model's products took {bf16 * 1e3:.0f} ms in bf16, {f32 * 1e3:.0f} ms in float32)"

    def _log_step(self, loss, norm, lr, clock, progress):
        """A metrics.jsonl line (and a printed one without a bar) every log_interval steps."""
        cfg = self.config
        if self.step % cfg.log_interval and self.step != cfg.max_steps and not self.budget_spent():
            return
        tps, threads = clock.tokens_per_s(self.tokens_seen), minillm.get_num_threads()
        self._log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                   "tokens_per_s": tps, "threads": threads, "elapsed": self.elapsed})
        if progress.bar is None:
            progress.log(f"step {self.step:6d} | loss {loss:.4f} | lr {lr:.2e} | grad norm "
                         f"{norm:.3f} | {tps:,.0f} tok/s, {threads} thread{'s' * (threads > 1)} | "
                         f"{self.elapsed:.0f} s")

    def _run_eval(self, progress, final=False):
        t0 = self.time_fn()
        res = self.evaluate(max_batches=(self.config.final_eval_batches or None) if final else -1)
        self.last_eval = res
        rec = {"step": self.step, "val_loss": res["loss"], "val_ppl": res["ppl"],
               "val_tokens": res["tokens"], "elapsed": self.elapsed,
               "eval_seconds": self.time_fn() - t0}
        if "bpb" in res:
            rec["val_bpb"] = res["bpb"]
        self._log(rec)
        bpb = f" | val bits/byte {res['bpb']:.4f}" if "bpb" in res else ""
        progress.log(f"step {self.step:6d} | val loss {res['loss']:.4f} | val ppl {res['ppl']:.2f}{bpb}")
        return res


_MAY_CHANGE = ("A resume may change: " + ", ".join(o if o != "data" else "data (the same tokens, moved)"
                                                    for o in FREE_OPTIONS if o != "max_steps")
               + "; max_steps while the learning-rate schedule stays the same; or --extend-steps.")


def resumed_config(saved, overrides, allow_changes=False, extend_steps=None, source="config"):
    """(TrainConfig, changes) of a resumed run: the checkpoint's options `saved` (dict) with
    `overrides` (dict). `changes` lists (option, checkpoint's value, new value) for every
    option that differs. ValueError names each refused option with both values:
    FIXED_OPTIONS always; the optimisation options, and a max_steps that moves the end of the
    learning-rate cosine, unless allow_changes. extend_steps=N: max_steps + N, with the
    cosine still ending where it did (the N steps train at min_lr)."""
    import dataclasses
    base = TrainConfig.from_dict(saved, source=source)
    overrides = dict(overrides)
    if extend_steps is not None and base.time_budget:
        raise ValueError(f"--extend-steps: the run has a time_budget of {base.time_budget:g} s, and "
                         f"it ends when that is spent; to train longer, give a larger "
                         f"--time-budget with --allow-changes (the cooldown then restarts from "
                         f"the new fraction)")
    if extend_steps is not None:
        if isinstance(extend_steps, bool) or not isinstance(extend_steps, int) or extend_steps < 1:
            raise ValueError(f"extend_steps must be a positive integer, got {extend_steps!r}")
        if "max_steps" in overrides:
            raise ValueError("give --max-steps or --extend-steps, not both")
        overrides["max_steps"] = base.max_steps + extend_steps
        overrides.setdefault("lr_decay_steps", base.lr_decay_steps or base.max_steps)
    new = base.replace(**overrides)
    changes = [(f.name, getattr(base, f.name), getattr(new, f.name)) for f in dataclasses.fields(TrainConfig)
               if getattr(base, f.name) != getattr(new, f.name)]

    def listed(items):
        return ", ".join(f"{k} {old!r} (now {now!r})" for k, old, now in items)
    fixed = [c for c in changes if c[0] in FIXED_OPTIONS]
    if fixed:
        raise ValueError(f"--resume: the checkpoint was made with other {listed(fixed)}; the weights "
                         f"and the data order depend on these, so they cannot change on resume "
                         f"(start a new run instead). {_MAY_CHANGE}")
    other = [c for c in changes if c[0] not in FIXED_OPTIONS + FREE_OPTIONS + ("lr_decay_steps",)]
    ends = [max(c.lr_decay_steps or c.max_steps, c.warmup_steps) for c in (base, new)]
    budgeted = base.time_budget and new.time_budget        # the schedule ignores max_steps
    if ends[0] != ends[1] and not allow_changes and not other and not budgeted:
        steps = new.max_steps - base.max_steps
        hint = (f"use --extend-steps {steps} to train on at the final learning rate, or "
                if steps > 0 else "")
        raise ValueError(f"--resume: max_steps {base.max_steps} -> {new.max_steps} moves the end of "
                         f"the learning-rate cosine from step {ends[0]} to {ends[1]} (it ends at "
                         f"max_steps when lr_decay_steps is not set), so every later step would get "
                         f"another learning rate than the run had; {hint}pass --allow-changes to "
                         f"take the new schedule")
    if other and not allow_changes:
        raise ValueError(f"--resume: the checkpoint was trained with other {listed(other)}; pass "
                         f"--allow-changes to continue with the new values (the run is then not "
                         f"equal to any uninterrupted one), or leave them out. {_MAY_CHANGE}")
    return new, changes


class _Clock:
    """Elapsed seconds (continuing a resumed run's) and tokens/s between log lines, read from
    time_fn."""

    def __init__(self, elapsed, tokens, time_fn=time.perf_counter):
        self.time_fn = time_fn
        self.start, self.elapsed0 = time_fn(), elapsed
        self.t_log, self.tokens_log = self.start, tokens

    def elapsed(self):
        return self.elapsed0 + self.time_fn() - self.start

    def tokens_per_s(self, tokens):
        now = self.time_fn()
        tps = (tokens - self.tokens_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.tokens_log = now, tokens
        return tps


class _ThreadTuner:
    """The thread count of the training steps, chosen by timing them. On a machine whose cores
    other processes also want, every kernel's thread team waits for a thread the OS took off its
    core, and half the threads can train faster than all of them (2 cores, one taken by another
    process: 1 thread about 1.5x faster than 2). Nothing tells that apart from a quiet machine
    but the clock, so steps run in windows of WINDOW, each at `full` threads or at half, and each
    count keeps the median step time of its windows (averaged over consecutive ones). A window
    takes the faster count; the slower is tried again after `interval` windows, which doubles
    (EXPLORE_MIN up to EXPLORE_MAX) each time the try confirms the choice and starts over when
    it does not, or when a window of the faster count ran 1.5x slower than its average (the
    load changed: the slower count is then tried at once). The kernels give the same bits for
    any thread count, so this changes the speed only."""
    WINDOW, EXPLORE_MIN, EXPLORE_MAX = 6, 4, 64

    def __init__(self, full, time_fn):
        self.counts = (full, max(1, full // 2))
        self.time_fn = time_fn
        self.avg = [None, None]             # seconds per step at each count
        self.way, self.since, self.interval = 0, 0, self.EXPLORE_MIN
        self.times, self.t0, self.warming = [], None, True
        self.active = full > 1

    def _faster(self):
        return 1 if self.avg[1] is not None and self.avg[1] < self.avg[0] else 0

    def start_step(self):
        if self.active:
            minillm.set_num_threads(self.counts[self.way])
            self.t0 = self.time_fn()

    def end_step(self):
        if not self.active:
            return
        self.times.append(self.time_fn() - self.t0)
        if len(self.times) < self.WINDOW:
            return
        step = sorted(self.times)[len(self.times) // 2]
        self.times = []
        if self.warming:                    # the first steps allocate and fill caches: not timed
            self.warming = False
            return
        avg, way, best = self.avg, self.way, self._faster()
        jumped = way == best and avg[way] is not None and step > 1.5 * avg[way]
        # a try's window replaces the count's average: the earlier ones were under another load
        avg[way] = step if avg[way] is None or way != best else 0.5 * (avg[way] + step)
        if way != best:                     # a try of the slower count: did it stay slower?
            confirmed = self._faster() == best
            self.interval = min(2 * self.interval, self.EXPLORE_MAX) if confirmed else self.EXPLORE_MIN
            self.since = 0
        else:
            self.since += 1
        if jumped:
            self.interval = self.EXPLORE_MIN
        best = self._faster()
        other = 1 - best
        self.way = other if avg[other] is None or jumped or self.since >= self.interval else best

    def restore(self):
        """Back to `full` threads (the run is over)."""
        if self.active:
            minillm.set_num_threads(self.counts[0])


def _launcher_rank():
    """This process's rank as mpirun's environment gives it (0 outside MPI), known before
    distributed.init(): only rank 0 takes the run folder's lock."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
