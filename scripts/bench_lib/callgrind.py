"""Counting the instructions a process executes with valgrind's callgrind, window by window.

The process runs under ``valgrind --tool=callgrind --instr-atstart=no``: start-up and warm-up run
uninstrumented (a few times slower than native, not fifty), and nothing is counted until
:meth:`Callgrind.start` switches instrumentation on through ``callgrind_control`` (vgdb). Each
:meth:`Callgrind.lap` dumps the counts since the previous one, :meth:`Callgrind.read` reads its total. The
process under valgrind may be another one (the orchestrator) or the caller itself:
``callgrind_control`` runs in a child process while the caller waits for it.

A lap's count holds fixed costs besides the work (returning from the previous control call, the
dump request): take two laps of N1 and N2 units of work and ``(I(N2) - I(N1)) / (N2 - N1)``, where
they cancel (:func:`per_unit`). Callgrind counts user-space instructions only: the kernel's work
in system calls is not in them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)  # "summary:" reads 0 once instrumentation is off


class CallgrindMissing(RuntimeError):
    """valgrind or callgrind_control cannot be found."""


@dataclass(frozen=True)
class Callgrind:
    """The valgrind and callgrind_control executables, and the folder for callgrind's output files."""

    valgrind: str
    control: str
    out_dir: Path

    @classmethod
    def find(cls, valgrind: str, out_dir: Path) -> Callgrind:
        """Locate ``valgrind`` (a path or a name on PATH) and the ``callgrind_control`` beside it."""
        found = shutil.which(valgrind)
        if found is None:
            raise CallgrindMissing(
                f"valgrind not found ({valgrind!r}): the instruction counts need valgrind's callgrind; "
                "install it (Debian/Ubuntu: apt-get install valgrind) or pass its path with --valgrind"
            )
        beside = Path(found).with_name("callgrind_control")
        control = str(beside) if beside.exists() else shutil.which("callgrind_control")
        if control is None:
            raise CallgrindMissing(f"callgrind_control not found beside {found} or on PATH; it comes with valgrind")
        out_dir.mkdir(parents=True, exist_ok=True)
        return cls(found, control, out_dir)

    def command(self, name: str) -> list[str]:
        """The argv prefix that runs a program under callgrind, counting nothing until told to."""
        return [
            self.valgrind, "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={self.out_dir / name}.%p", f"--log-file={self.out_dir / name}.%p.log",
        ]  # fmt: skip

    def version(self) -> str:
        return subprocess.run([self.valgrind, "--version"], capture_output=True, text=True, check=True).stdout.strip()

    def _control(self, pid: int, *args: str) -> None:
        run = subprocess.run([self.control, *args, str(pid)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0 or "Error" in run.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)} {pid} failed: {(run.stdout + run.stderr).strip()}")

    def start(self, pid: int) -> None:
        """Switch instrumentation on: counting starts. Blocking: from a thread when the caller's event
        loop must go on (the orchestrator's driver), directly when the caller is the process measured.
        Switching costs a retranslation of all code run afterwards, so it is done once per run."""
        self._control(pid, "--instr=on")

    def lap(self, pid: int, label: str) -> None:
        """Dump what ``pid`` executed since the previous lap (or :meth:`start`) as ``label``; :meth:`read`
        gives its total. A process measuring itself reads after :meth:`stop`: reading is work too."""
        self._control(pid, f"--dump={label}")

    def read(self, pid: int, label: str) -> int:
        return read_dump(self.out_dir, pid, label)

    def stop(self, pid: int) -> None:
        """Switch instrumentation off (the rest of the run goes at uninstrumented speed)."""
        self._control(pid, "--instr=off")


def read_dump(out_dir: Path, pid: int, label: str) -> int:
    """The total instructions in ``pid``'s dump called ``label`` (callgrind names the files NAME.PID.N)."""
    for path in sorted(out_dir.glob(f"*.{pid}.*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.suffix == ".log":
            continue
        text = path.read_text(errors="replace")
        if f"desc: Trigger: dump {label}\n" in text and (found := _TOTALS.search(text)):
            return int(found.group(1))
    raise RuntimeError(f"callgrind wrote no dump {label!r} for pid {pid} into {out_dir}")


def total(path: Path) -> int:
    """The instructions in a callgrind output file of a whole run (counted from the start)."""
    found = _TOTALS.search(path.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(f"no totals in callgrind's file {path}")
    return int(found.group(1))


def per_unit(small: tuple[int, int], large: tuple[int, int]) -> float:
    """Instructions per unit of work from two windows ``(units, instructions)``; fixed costs cancel."""
    (n1, i1), (n2, i2) = small, large
    if n2 == n1:
        raise ValueError("the two windows need different amounts of work")
    return (i2 - i1) / (n2 - n1)
