"""Ray's own log records in a gateway process: off the terminal, into a file beside Ray's other logs.

Ray's driver-side loggers print their INFO lines and warnings (Serve starting, token authentication,
"SIGTERM handler is not set") on the terminal, between the gateway's own start-up lines. They say
nothing an operator acts on, so they go to `gateway-driver-<pid>.log` in Ray's session log folder,
which the gateway names once at start. Records at ERROR or above still reach the gateway's console
as well: a failure Ray reports must not go unseen.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import TextIO

# Ray's driver-side loggers with console handlers of their own (neither propagates to the root logger).
RAY_LOGGERS = ("ray", "ray.serve")

# `ray.init(configure_logging=True)` puts this format on the handlers the "ray" logger has then.
RAY_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"


class RayLogFile(logging.Handler):
    """Holds Ray's records until Ray's log folder is known (it is created by `ray.init`), then appends
    them, and every later one, to a file there."""

    def __init__(self, console_level: int = logging.ERROR, keep: int = 500) -> None:
        super().__init__(logging.DEBUG)
        self.console_level = console_level
        self.setFormatter(logging.Formatter(RAY_LOG_FORMAT))
        self._pending: deque[logging.LogRecord] = deque(maxlen=keep)
        self._file: TextIO | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._file is None:
                self._pending.append(record)
            else:
                self._file.write(self.format(record) + "\n")
                self._file.flush()
        except Exception:  # noqa: BLE001 - a full disk must not take Ray's calling thread down
            self.handleError(record)
        if record.levelno >= self.console_level:
            root = logging.getLogger()
            if root.isEnabledFor(record.levelno):
                root.handle(record)

    def attach(self, path: Path) -> bool:
        """Writes the held records to `path` and appends every later one there. False when the file cannot
        be opened: the records stay held (the newest `keep` of them) rather than reach the terminal."""
        self.acquire()
        try:
            if self._file is None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = path.open("a", encoding="utf-8")
                except OSError:
                    return False
                while self._pending:
                    self._file.write(self.format(self._pending.popleft()) + "\n")
                self._file.flush()
            return True
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            self.release()
        super().close()


def route_ray_logs(handler: logging.Handler, names: tuple[str, ...] = RAY_LOGGERS) -> None:
    """Makes `handler` the only handler of Ray's driver-side loggers, in place of the console handlers Ray and
    Ray Serve give them when they are imported."""
    for name in names:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if h is not handler:
                logger.removeHandler(h)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False
