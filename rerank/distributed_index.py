"""Index encoding on a Ray cluster: the shards of a dense, SPLADE or ColBERT build
(:mod:`rerank.retrieve.shards`) encoded by a pool of actors, each loading the model once.

The driver reads the corpus, sends each shard's texts to an actor as one call, and writes each
encoded shard into the build's work folder as it comes back, so no node but the driver needs to
see the corpus, the work folder or the index. The same shards in the same order make the same
index as one process. A killed actor is restarted by Ray and its shards in flight are retried; a
shard it had finished was already written by the driver and is not encoded again. A killed
driver run again reads the shards already written and sends only the others.

>>> from rerank.distributed_index import OnRay                       # doctest: +SKIP
>>> build_index("msmarco-passage/", "indexes/msmarco/dense", "dense",
...             encode_with=OnRay(address="auto", workers=16))       # doctest: +SKIP
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank.distributed import IN_FLIGHT, RayOptions, connect
from rerank.extras import require
from rerank.hardware import apply_threads
from rerank.retrieve.base import index_kinds
from rerank.retrieve.shards import Arrays, EncodedIndex


class ShardWorker:
    """A Ray actor: loads one kind's encoder once, then encodes the shards it is sent."""

    def __init__(self, kind: str, parameters: Any, threads: int) -> None:
        apply_threads(threads)
        self.kind: type[EncodedIndex] = index_kinds()[kind]  # type: ignore[assignment]  # an encoded kind
        self.parameters = parameters
        self.encoder = self.kind.load_encoder(parameters)

    def settings(self) -> dict[str, Any]:
        """How the encoder runs (the manifest's record); also marks the actor ready."""
        return self.kind.encoder_settings(self.encoder)

    def encode(self, number: int, texts: list[str]) -> tuple[int, Arrays]:
        """Shard ``number`` encoded."""
        return number, self.kind.encode_shard(self.encoder, texts, self.parameters)


@dataclass
class OnRay:
    """Encode a build's shards on a Ray cluster (a :class:`~rerank.retrieve.shards.ShardRunner`):
    ``workers`` actors of ``cpus_per_worker`` CPUs (and ``gpus_per_worker`` GPUs) each, spread
    over the nodes; ``address`` as for :class:`~rerank.distributed.RayOptions`. ``on_shard``
    (for tests and benchmarks) is called with each shard number as it is written; ``timing``
    receives the start-up seconds and the seconds in all."""

    address: str = "local"
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    on_shard: Callable[[int], None] | None = None
    timing: dict[str, float] = field(default_factory=dict)
    actors: list[Any] = field(default_factory=list, repr=False)
    """The actors of the build in progress."""

    def __post_init__(self) -> None:
        RayOptions(self.address, self.workers, self.cpus_per_worker, self.gpus_per_worker)  # checks the values
        require("ray", "ray", "rerank index --engine ray")

    def encode(self, kind: type[EncodedIndex], parameters: Any, texts: Callable[[int], list[str]],
               todo: Sequence[int], save: Callable[[int, Arrays, dict[str, Any]], None], progress: Any) -> None:
        """See :class:`~rerank.retrieve.shards.ShardRunner`."""
        import ray  # optional: the 'ray' extra

        if not todo:
            return
        connect(self.address)
        began = time.perf_counter()
        remote = ray.remote(ShardWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None, max_restarts=-1,
            max_task_retries=-1, scheduling_strategy="SPREAD")
        actors = self.actors = [remote.remote(kind.kind, parameters, max(1, int(self.cpus_per_worker)))
                                for _ in range(min(self.workers, len(todo)))]
        try:
            settings = ray.get([a.settings.remote() for a in actors])[0]
            self.timing["startup_s"] = time.perf_counter() - began
            pending = iter(todo)
            running: dict[Any, Any] = {}  # a call in flight -> the actor running it
            sizes: dict[int, int] = {}

            def submit(actor: Any) -> None:
                number = next(pending, None)
                if number is not None:
                    chunk = texts(number)
                    sizes[number] = len(chunk)
                    running[actor.encode.remote(number, chunk)] = actor

            for actor in actors:  # each actor holds IN_FLIGHT shards, so it never waits for the driver
                for _ in range(IN_FLIGHT):
                    submit(actor)
            while running:
                finished, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(finished[0])
                submit(actor)
                number, arrays = ray.get(finished[0])
                save(number, arrays, settings)
                progress.update(sizes.pop(number))
                if self.on_shard is not None:
                    self.on_shard(number)
        finally:
            for actor in actors:
                ray.kill(actor)
            self.actors = []
        self.timing["seconds"] = time.perf_counter() - began
