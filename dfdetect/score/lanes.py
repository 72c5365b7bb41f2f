"""The coordinator's lanes: consecutive inputs handed to workers (dask actors, or this process),
whose pieces come back in the order they are ready; a lane whose worker dies costs one file."""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from dfdetect.score.sources import ERROR, Item
from dfdetect.score.windows import FileResult, Lane, Piece, WindowConfig, lane_pieces

LANE_FILES = 64          # at most this many consecutive inputs per lane
LANES_PER_WORKER = 2     # one decoding while the other's piece travels or waits to be scored


def make_lanes(pending: list[tuple[int, Item]], workers: int) -> list[list[tuple[int, Item]]]:
    """Consecutive runs of inputs (members of one archive stay together), a few per worker. Each
    lane opening a compressed tar decompresses it from the start up to its first member, so the
    members of one are split into no more lanes than run at once: at most that many passes."""
    workers = max(1, workers)
    size = max(1, min(LANE_FILES, math.ceil(len(pending) / (4 * workers))))
    lanes = []
    for archive, group in itertools.groupby(pending, key=lambda p: p[1].path if p[1].sequential else None):
        group = list(group)
        n = size if archive is None else max(size, math.ceil(len(group) / (LANES_PER_WORKER * workers)))
        lanes += [group[i:i + n] for i in range(0, len(group), n)]
    return lanes


def local_pieces(lanes, config: WindowConfig) -> Iterator[Piece]:
    for lane in lanes:
        yield from lane_pieces(lane, config)


@dataclass
class _Running:
    lane: list[tuple[int, Item]]
    created: object                # the future that holds the actor alive
    actor: object
    pending: object                # the ActorFuture of the next piece
    finished: set = field(default_factory=set)


def dask_pieces(lanes, config: WindowConfig, client) -> Iterator[Piece]:
    """Pieces of all lanes in the order they are ready, LANES_PER_WORKER lanes per worker at a
    time. A lane whose worker dies (a decoder crash, out of memory) reports the file it was on as
    an error and its remaining files go on in a new lane."""
    addresses = sorted(client.scheduler_info()["workers"]) or [None]
    queue, running, started = deque(lanes), {}, 0
    while queue or running:
        while queue and len(running) < LANES_PER_WORKER * len(addresses):
            lane = queue.popleft()
            where = addresses[started % len(addresses)]
            created = client.submit(Lane, lane, config, actor=True, pure=False,
                                    workers=[where] if where else None, allow_other_workers=True)
            actor = created.result()
            running[started] = _Running(lane, created, actor, actor.pull())
            started += 1
        key = _first_ready(running)
        lane = running[key]
        try:
            piece = lane.pending.result()
        except Exception as e:
            del running[key]
            left = [(i, item) for i, item in lane.lane if i not in lane.finished]
            if left:
                culprit = FileResult(left[0][0], ERROR, "worker_failed",
                                     f"{left[0][1].where}: the worker scoring this file failed ({type(e).__name__}: "
                                     f"{e}); it may have crashed on this file or run out of memory")
                if left[1:]:
                    queue.appendleft(left[1:])
                yield Piece.of_results([culprit])
            continue
        lane.finished.update(r.item for r in piece.finished)
        if piece.last:
            del running[key]
        else:
            lane.pending = lane.actor.pull()
        yield piece


def _first_ready(running: dict) -> int:
    while True:
        for key, lane in running.items():
            if lane.pending.done():
                return key
        time.sleep(0.002)
