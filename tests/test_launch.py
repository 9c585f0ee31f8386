"""A stop signal while sms-blaster is still importing its modules: one `Error:` line and exit
130, not death by the signal (SIGTERM, SIGHUP) or a KeyboardInterrupt traceback (Ctrl-C); for
`receive`, whose every stop exits 0, one line saying nothing was received and exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sms_blaster import stopsignals

ROOT = Path(__file__).resolve().parent.parent

# Runs the console command's entry point as installed (pyproject's [project.scripts]), with a
# signal sent to itself as a module loads: the command line's (at its first `import click`), the
# time that takes most of a start-up, or the command's own (`sms_blaster.campaign`, imported by
# `send` once click has read the arguments); or (`exec`) inside an exec() of a string as the
# command's modules load (the methods a dataclass gets are made so): the interpreter remembers
# an interrupt that left one until another exec() of a string, none of which comes after these;
# or (`prologue`) as the command line's first lines run, before its own catch of an interrupt.
_SIGNAL_WHILE_IMPORTING = """
import builtins, importlib, os, signal, sys
entry = sys.argv[1]
sig = getattr(signal, sys.argv[2])
module_name = sys.argv[3]
real_import = builtins.__import__
real_exec = builtins.exec
def importing(name, *args, **kwargs):
    if name == module_name and not getattr(importing, "done", False):
        importing.done = True
        os.kill(os.getpid(), sig)
    return real_import(name, *args, **kwargs)
def executing(source, *args, **kwargs):
    late = "sms_blaster.campaign" in sys.modules  # no exec() of a string after this one
    if isinstance(source, str) and late and not getattr(executing, "done", False):
        executing.done = True  # the signal comes inside the exec, as the source runs
        source = f"__import__('os').kill(__import__('os').getpid(), {int(sig)})\\n" + source
    return real_exec(source, *args, **kwargs)
def hooked(real):
    def preparing(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    return preparing
if module_name == "exec":
    builtins.exec = executing
elif module_name == "prologue":  # the command line's first lines, before its catch
    import sms_blaster.cli as command_line
    command_line._hold_standard_descriptors = hooked(command_line._hold_standard_descriptors)
else:
    builtins.__import__ = importing
module, _, function = entry.partition(":")
sys.argv = ["sms-blaster", *(sys.argv[4:] or ["send", "rows.csv", "--from", "Shop"])]
getattr(importlib.import_module(module), function)()
"""


def _entry_point() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["scripts"]["sms-blaster"])


@pytest.mark.parametrize("module", ["click", "sms_blaster.campaign", "exec", "prologue"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_while_the_modules_load_is_one_error_line_and_exit_130(
    sig: str, module: str, tmp_path: Path
) -> None:
    """Before the fix SIGTERM and SIGHUP killed the process (143, 129) and Ctrl-C printed a
    KeyboardInterrupt traceback; once click ran the command, click's own catch of the
    interrupt wrote a blank line, then "Error: aborted". An interrupt out of an exec() said
    its line, then the interpreter killed the process with SIGINT at its exit (-2)."""
    # Run as `python -m`, as `python -m sms_blaster` runs: only there does the interpreter end
    # by SIGINT after an interrupt it remembers (a script's SystemExit exits on the spot).
    (tmp_path / "signal_while_importing.py").write_text(_SIGNAL_WHILE_IMPORTING)
    process = subprocess.run(
        [sys.executable, "-m", "signal_while_importing", _entry_point(), sig, module],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT)))},
        check=False,
    )
    assert process.returncode == 130, process.stderr
    assert process.stderr == "Error: interrupted while starting: nothing was done\n"


def test_sigterm_before_a_command_takes_signals_is_whatever_ctrl_c_is_then() -> None:
    """Inside asyncio.Runner, Ctrl-C's handler cancels the command's task (its setup unwinds
    through its `finally` blocks): SIGTERM and SIGHUP get that handler too, not a
    KeyboardInterrupt raised at whatever line the loop was on."""
    seen: list[int] = []
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        stopsignals._as_ctrl_c(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [signal.SIGINT]


def test_sigterm_with_ctrl_c_ignored_still_interrupts() -> None:
    """A background job of a script ignores SIGINT; SIGTERM must still stop it."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            stopsignals._as_ctrl_c(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    "module",
    [
        "click",  # the command line loads
        "sms_blaster.receiver.app",  # the receive command loads the receiver
        "stops_on_import",  # the receiver's own signal handlers are set: it loads --hook
    ],
)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_while_the_receiver_starts_exits_0_as_the_readme_says(
    sig: str, module: str, tmp_path: Path
) -> None:
    """Before, exit 130 and "Error: interrupted while starting" while the README promises exit
    0 for a receiver's SIGTERM; from inside the receiver's start (its --hook loading), a store
    opened and a listener never announced. Now: exit 0, one line, never listening."""
    # The receiver imports its hook with importlib, not through `import`: the hook signals.
    (tmp_path / "stops_on_import.py").write_text(
        f"import os, signal\nos.kill(os.getpid(), signal.{sig})\n"
        "async def on_receipt(receipt):\n    pass\n"
    )
    store = tmp_path / "s.journal"
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            _SIGNAL_WHILE_IMPORTING,
            _entry_point(),
            sig,
            module,
            "receive",
            "--store",
            str(store),
            "--port",
            "0",
            "--hook",
            "stops_on_import:on_receipt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])},
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert "listening" not in process.stderr
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    assert "stopped while starting: nothing was received" in lines[0]
