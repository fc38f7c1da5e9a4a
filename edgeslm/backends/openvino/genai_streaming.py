"""openvino-genai's callback streamer turned into a token iterator, and the generation config from edgeslm's
options: shared by the text engine (``LLMPipeline``) and the vision engine (``VLMPipeline``).

The pipeline's ``generate`` runs in a worker thread and its streamer puts each token on a queue; the caller's
generator yields them. Stopping early (the runtime hit a stop id or text) sets an event the streamer answers
with ``StreamingStatus.STOP``; an exception in the worker is raised in the caller's thread as a BundleError.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ...errors import BundleError
from ...runtime.generation import GenerationOptions

_DONE = object()


def generation_config(genai: Any, options: GenerationOptions, max_new_tokens: int,
                      stop_ids: frozenset[int] | set[int] | None = None) -> Any:
    config = genai.GenerationConfig()
    config.max_new_tokens = max(1, max_new_tokens)
    config.apply_chat_template = False  # the runtime rendered the manifest's template
    if stop_ids:
        config.stop_token_ids = set(stop_ids)
    config.do_sample = not options.greedy
    if not options.greedy:
        config.temperature = options.temperature
        config.top_p = options.top_p
        config.top_k = options.top_k or 0
        if options.seed is not None:
            config.rng_seed = options.seed
    return config


def streamed_tokens(genai: Any, generate: Callable[[Any], Any], failure: str, thread_name: str) -> Iterator[int]:
    """Run ``generate(streamer)`` in a thread and yield its tokens; ``failure`` starts the error message."""
    tokens: queue.Queue = queue.Queue()
    stop = threading.Event()

    class Streamer(genai.StreamerBase):
        def write(self, token: Any) -> Any:
            for t in (token if isinstance(token, list) else [token]):
                tokens.put(int(t))
            return genai.StreamingStatus.STOP if stop.is_set() else genai.StreamingStatus.RUNNING

        def end(self) -> None:
            return None

    errors: list[BaseException] = []

    def run() -> None:
        try:
            generate(Streamer())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)
        finally:
            tokens.put(_DONE)

    worker = threading.Thread(target=run, name=thread_name, daemon=True)
    worker.start()
    try:
        while (item := tokens.get()) is not _DONE:
            yield item
    finally:
        stop.set()
        worker.join()
    if errors:
        raise BundleError(f"{failure}: {' '.join(str(errors[0]).split())[:400]}")
