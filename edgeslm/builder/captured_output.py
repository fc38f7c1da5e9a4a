"""Send what third-party converters print (stdout, stderr, logging, tqdm) to a log file.

Converters such as onnxruntime-genai's model builder print thousands of lines; the user sees our
progress display instead, and the full log stays in the build folder for debugging.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.handlers = [handler]
        # Handlers that libraries attached to their own loggers keep their old stream: silence them.
        muted = []
        for logger in list(logging.Logger.manager.loggerDict.values()):
            if isinstance(logger, logging.Logger) and logger.handlers:
                muted.append((logger, logger.handlers, logger.propagate))
                logger.handlers = []
                logger.propagate = True
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            # Loggers configured during the capture (basicConfig, new handlers) would keep
            # writing to the closed log: put everything back as it was.
            for logger in list(logging.Logger.manager.loggerDict.values()):
                if isinstance(logger, logging.Logger):
                    logger.handlers = [h for h in logger.handlers if getattr(h, "stream", None) is not log]
            for logger, handlers, propagate in muted:
                logger.handlers = handlers
                logger.propagate = propagate
            root.handlers = saved_handlers
            root.setLevel(saved_level)
            sys.stdout.flush()
