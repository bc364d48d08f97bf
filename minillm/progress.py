"""One progress display for every long job: training, `data prepare`, tokenizer training.

    report = Progress(total_bytes, "tokenizing", unit="B", mode="auto")
    report.update(n)        # or report.set(done)
    report.log("a line")    # printed above the bar, or as a plain line
    report.close()

Modes (the same on every command: `--progress MODE`, with `--quiet` meaning none):
    auto  a tqdm bar when tqdm is installed and the stream is a terminal, else lines
    bar   a tqdm bar when tqdm is installed, else lines
    log   plain lines: `lines` of them over the run, evenly spaced (and whatever log() prints)
    none  silent, log() included
"""
import sys
import time

__all__ = ["MODES", "Progress", "progress_mode"]

MODES = ("auto", "bar", "log", "none")


def progress_mode(progress):
    """The mode of what a caller passed: one of MODES, True ("auto") or False/None ("none")."""
    if progress is True:
        return "auto"
    if progress is False or progress is None:
        return "none"
    if progress not in MODES:
        raise ValueError(f"progress must be one of {', '.join(MODES)} (or True/False), got {progress!r}")
    return progress


def _amount(x, unit, unit_scale):
    """'1,234 step', or with unit_scale '12.3 MB'."""
    if unit_scale:
        for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if x >= scale:
                return f"{x / scale:,.1f} {prefix}{unit}"
    return f"{x:,.0f} {unit}"


class Progress:
    """A progress report of a job of `total` units (see the module docstring for `mode`).

    desc: what is counted ("tokenizing"); unit: its unit ("B", "step"); unit_scale: print
    amounts with k/M/G; initial: units already done (a resumed run); stream: where lines and
    the bar go (default stderr); lines: plain lines printed over a run without a bar (0: none,
    when the caller logs its own lines). `bar` is the tqdm bar or None."""

    def __init__(self, total, desc, unit="it", mode="auto", initial=0, stream=None, unit_scale=False,
                 lines=10):
        mode = progress_mode(mode)
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = mode == "none"
        self.done, self.start_done, self.t0 = initial, initial, time.perf_counter()
        self.lines = 0 if self.quiet else lines
        self.next_line = self._line_after(initial)
        self.bar = None
        isatty = getattr(self.stream, "isatty", lambda: False)
        if mode == "bar" or (mode == "auto" and isatty()):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                                dynamic_ncols=True, file=self.stream)

    def _line_after(self, done):
        if not self.lines or not self.total:
            return float("inf")
        step = max(self.total / self.lines, 1)
        return (done // step + 1) * step

    def update(self, n=1, postfix=None):
        """Add n units; postfix: short text shown after the bar (e.g. "loss 2.31")."""
        self.set(self.done + n, postfix)

    def set(self, done, postfix=None):
        """Set the units done so far."""
        if self.bar is not None:
            self.bar.update(done - self.done)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
        elif done >= self.next_line or (done >= self.total and self.done < self.total and self.lines):
            self.next_line = self._line_after(done)
            rate = (done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
            self.log(f"{self.desc}: {_amount(done, self.unit, self.unit_scale)} / "
                     f"{_amount(self.total, self.unit, self.unit_scale)} "
                     f"({_amount(rate, self.unit, self.unit_scale)}/s)")
        self.done = done

    def set_total(self, total):
        """Change the total (e.g. once a time budget turned into a number of steps)."""
        self.total = total
        self.next_line = self._line_after(self.done)
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def log(self, text):
        """Print a line (above the bar if there is one); nothing in mode none."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
