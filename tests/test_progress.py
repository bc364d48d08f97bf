"""The one progress display (minillm/progress.py) and its flags on every long command."""
import io

import pytest

from minillm.cli import build_parser
from minillm.progress import Progress, progress_mode


def test_log_mode_prints_evenly_spaced_lines_and_log_lines():
    out = io.StringIO()
    p = Progress(100, "tokenizing", unit="B", mode="log", stream=out, lines=4)
    for _ in range(100):
        p.update(1)
    p.log("done")
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" / ")[0] for line in lines[:-1]] == [f"tokenizing: {n} B" for n in (25, 50, 75, 100)]
    assert lines[-1] == "done"


def test_none_mode_is_silent_and_a_terminal_less_auto_prints_lines():
    out = io.StringIO()
    p = Progress(10, "x", mode="none", stream=out)
    p.set(10)
    p.log("hidden")
    assert out.getvalue() == ""
    p = Progress(10, "x", mode="auto", stream=out, lines=1)     # StringIO is no terminal: no bar
    assert p.bar is None
    p.set(10)
    assert out.getvalue().startswith("x: 10 it / 10 it")


def test_modes_from_booleans_and_bad_modes():
    assert progress_mode(True) == "auto" and progress_mode(False) == "none" and progress_mode(None) == "none"
    with pytest.raises(ValueError, match="progress must be one of auto, bar, log, none"):
        progress_mode("loud")


@pytest.mark.parametrize("argv", [["data", "prepare", "--input", "a", "--tokenizer", "t", "--out", "o"],
                                  ["tokenizer", "train", "--input", "a", "--vocab-size", "300", "--out", "o"],
                                  ["train"]])
def test_every_long_command_takes_progress_and_quiet(argv):
    parser = build_parser()
    assert parser.parse_args(argv + ["--progress", "log"]).progress == "log"
    assert parser.parse_args(argv + ["--quiet"]).quiet
