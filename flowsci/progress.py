"""Progress of long loops, for a person at a terminal and for one watching a log file.

`Progress` is the one progress reporter of every stage. On a terminal (and with progress bars
on) it is a tqdm bar. Otherwise (a Snakemake job writes stderr to the rule's log, or
`--quiet`) it writes log lines through `logging` (logger `flowsci.progress`): one when it
starts, one whenever `interval` seconds have passed or another `fraction` of the work is done
(whichever comes first), and one when it closes:

    progress train egnn_mle: 120/200 steps (60%) | 1.52 step/s | elapsed 1m19s | ETA 53s | loss 1.23

`format_line` writes that message and `parse_line` reads it back (used by `flowsci status`).
The interval defaults to 30 s; FLOWSCI_PROGRESS_INTERVAL (seconds) overrides it, and so does
the CLI option `--progress-interval`, which sets that variable.

Leaf module: imports nothing from flowsci.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
import weakref
from typing import Any, Callable

ENV_INTERVAL = "FLOWSCI_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between log lines at most
DEFAULT_FRACTION = 0.1  # and a line at least every 10 % of the work
LOGGER = "flowsci.progress"
PREFIX = "progress "


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    """Seconds between progress lines: FLOWSCI_PROGRESS_INTERVAL if set, else `default`."""
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_INTERVAL}={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise ValueError(f"{ENV_INTERVAL}={raw!r} must be >= 0 seconds")
    return value


def format_duration(seconds: float | None) -> str:
    """12s, 3m05s, 2h03m; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def parse_duration(text: str) -> float | None:
    """Inverse of format_duration (None for '?' or anything else)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not m or not any(m.groups()):
        return None
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return 3600.0 * h + 60.0 * mi + s


def _figure(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    try:
        return f"{float(value):.4g}"  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


def format_line(desc: str, done: int, total: int | None, unit: str, rate: float | None,
                elapsed: float, eta: float | None, figures: dict[str, Any] | None = None,
                state: str | None = None) -> str:
    """The progress message (see the module docstring). unit: singular ('step'; counts get
    an 's'); rate: units per second; state:
    'started' or 'done' in place of the ETA for the first and last lines."""
    count = (f"{done}/{total} {unit}s ({100.0 * done / total:.0f}%)" if total
             else f"{done} {unit}s")
    parts = [f"{PREFIX}{desc}: {count}"]
    if rate is None or rate <= 0:
        parts.append(f"? {unit}/s")
    elif rate >= 100.0:
        parts.append(f"{rate:.0f} {unit}/s")
    elif rate >= 1.0:
        parts.append(f"{rate:.3g} {unit}/s")
    else:
        parts.append(f"{1.0 / rate:.3g} s/{unit}")
    parts.append(f"elapsed {format_duration(elapsed)}")
    parts.append(state if state else f"ETA {format_duration(eta)}" if total else "ETA ?")
    parts += [f"{k} {_figure(v)}" for k, v in (figures or {}).items()]
    return " | ".join(parts)


_LINE = re.compile(r"(?:^|\s)progress (?P<desc>[^|:]+?): (?P<done>\d+)(?:/(?P<total>\d+))? "
                   r"(?P<unit>\S+)s(?: \((?P<pct>\d+)%\))?(?P<rest>(?: \| .*)?)$")


def parse_line(line: str) -> dict[str, Any] | None:
    """A progress line (anywhere in a log line) -> {'desc', 'done', 'total', 'unit', 'rate',
    'elapsed', 'eta' (seconds or None), 'state' ('running', 'started' or 'done'),
    'figures' {name: text}}; None for any other line."""
    m = _LINE.search(line.rstrip("\n"))
    if m is None:
        return None
    out: dict[str, Any] = {"desc": m["desc"], "done": int(m["done"]),
                           "total": int(m["total"]) if m["total"] else None, "unit": m["unit"],
                           "rate": None, "elapsed": None, "eta": None, "state": "running",
                           "figures": {}}
    for part in m["rest"].split(" | ")[1:]:
        if part.startswith("elapsed "):
            out["elapsed"] = parse_duration(part[len("elapsed "):])
        elif part.startswith("ETA "):
            out["eta"] = parse_duration(part[len("ETA "):])
        elif part in ("started", "done"):
            out["state"] = part
            out["eta"] = 0.0 if part == "done" else None
        elif part.endswith(f" {out['unit']}/s") or part.startswith("? "):
            out["rate"] = part
        elif re.fullmatch(rf"\S+ s/{re.escape(out['unit'])}", part):
            out["rate"] = part
        elif " " in part:
            k, v = part.split(" ", 1)
            out["figures"][k] = v
    return out


def _heartbeat(ref: "weakref.ref[Progress]", stop: threading.Event) -> None:
    """Heartbeat thread of a Progress; holds it only weakly, so that it also ends when the
    Progress is dropped without close()."""
    while True:
        progress = ref()
        if progress is None:
            return
        wait = progress._beat()
        del progress
        if stop.wait(wait):
            return


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of a loop of `total` units (None: unknown; `unit` in the singular), started
    at `initial`.

    bar: progress bars wanted (False for the CLI's --quiet); a tqdm bar is shown only when
    also stderr is a terminal, otherwise log lines are written at the interval. interval:
    seconds between lines (default: interval_from_env()); fraction: also a line every this
    fraction of `total`. figures: the key figures' starting values. `update(n, **figures)`
    advances by n and records the key figures (shown in the bar's postfix and in the lines);
    `set(**figures)` records without advancing; `close()` (or leaving a `with` block) writes
    the last line. heartbeat: a daemon thread repeats the line when `interval` passes without
    one, so that a unit of work longer than the interval (a sampling batch, a validation)
    still gives a line per interval; it stops at close() or when a `with` block is left, also
    by an exception (use `with`, so that a failing loop leaves no thread behind).
    """

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "item",
                 bar: bool = True, interval: float | None = None,
                 fraction: float = DEFAULT_FRACTION, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, mininterval: float = 1.0,
                 figures: dict[str, Any] | None = None, heartbeat: bool = True):
        self.total = int(total) if total else None
        self.desc, self.unit = desc, unit
        self.done = self.initial = int(initial)
        self.figures: dict[str, Any] = dict(figures or {})
        self.interval = interval_from_env() if interval is None else float(interval)
        self.fraction = fraction
        self.log = logger or logging.getLogger(LOGGER)
        self.clock = clock
        self.closed = False
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if bar and _is_terminal(sys.stderr):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit,
                             mininterval=mininterval)
            self.set()
            return
        self.t0 = self._last = clock()
        self._next_mark = self._mark_after(self.done)
        self._emit("started")
        if heartbeat and self.interval > 0:
            self._thread = threading.Thread(target=_heartbeat, name=f"progress {desc}",
                                            args=(weakref.ref(self), self._stop), daemon=True)
            self._thread.start()

    @property
    def writes_lines(self) -> bool:
        """True when progress goes to log lines (no terminal bar)."""
        return self._bar is None

    def _mark_after(self, done: int) -> float:
        if not self.total or self.fraction <= 0:
            return math.inf
        step = self.fraction * self.total
        return (math.floor(done / step + 1e-9) + 1) * step

    def set(self, **figures: Any) -> None:
        with self._lock:
            self.figures.update(figures)
            if self._bar is not None and self.figures:
                self._bar.set_postfix({k: _figure(v) for k, v in self.figures.items()},
                                      refresh=False)

    def update(self, n: int = 1, **figures: Any) -> None:
        self.set(**figures)
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
                return
            if self.total and self.done >= self.total:
                return  # close() writes the last line
            now = self.clock()
            if now - self._last >= self.interval or self.done >= self._next_mark - 1e-9:
                self._emit()

    def _beat(self) -> float:
        """One heartbeat: a line if `interval` passed without one; seconds to the next."""
        with self._lock:
            wait = self._last + self.interval - self.clock()
            if wait <= 0 and not self.closed:
                self._emit()
                wait = self.interval
        return min(max(wait, 0.01), 3600.0)  # an infinite interval: check hourly

    def _emit(self, state: str | None = None) -> None:
        now = self.clock()
        elapsed = now - self.t0
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else None
        eta = None
        if self.total and rate:
            eta = max(self.total - self.done, 0) / rate
        self.log.info(format_line(self.desc, self.done, self.total, self.unit, rate, elapsed,
                                  eta, self.figures, state))
        self._last = now
        self._next_mark = self._mark_after(self.done)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        """Write the last line ('done' when all units are done) and stop the heartbeat."""
        self._stop_heartbeat()
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._bar is not None:
                self._bar.close()
                return
            complete = self.total is None or self.done >= self.total
            self._emit("done" if complete else None)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
            return
        self._stop_heartbeat()  # failed: no last line (the error follows in the log)
        with self._lock:
            self.closed = True
            if self._bar is not None:
                self._bar.close()
