"""`drain`: a future whose worker died after it finished is waited for again, not failed.

The race (a worker killed while its finished results are being reported) is what
`test_a_worker_killed_mid_task_loses_no_job` meets now and then on a loaded machine; here it
is made to happen every time with stand-ins for Dask's futures and `as_completed`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import distributed
import pytest

from entk_fast.batch.execute import drain


class StandInFuture:
    """A future whose status runs through ``statuses``, one step each time it is yielded."""

    def __init__(self, name: str, statuses: list[str]) -> None:
        self.name = name
        self.statuses = deque(statuses)
        self.status = self.statuses.popleft()
        self.released = False

    def advance(self) -> None:
        if self.statuses:
            self.status = self.statuses.popleft()

    def release(self) -> None:
        self.released = True


class StandInAsCompleted:
    """Yields each future once per time it is handed in (`add` hands it in again)."""

    def __init__(self, futures: list[StandInFuture]) -> None:
        self.queue = deque(futures)
        self.added: list[str] = []

    def __iter__(self) -> StandInAsCompleted:
        return self

    def __next__(self) -> StandInFuture:
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()

    def add(self, future: StandInFuture) -> None:
        self.added.append(future.name)
        future.advance()
        self.queue.append(future)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> list[StandInAsCompleted]:
    made: list[StandInAsCompleted] = []

    def as_completed(futures: list[StandInFuture]) -> StandInAsCompleted:
        made.append(StandInAsCompleted(futures))
        return made[-1]

    monkeypatch.setattr(distributed, "as_completed", as_completed)
    return made


def test_a_result_lost_with_its_worker_is_waited_for_again(
    stand_in: list[StandInAsCompleted],
) -> None:
    ok = StandInFuture("ok", ["finished"])
    lost = StandInFuture("lost", ["lost", "pending", "finished"])
    errored = StandInFuture("errored", ["error"])
    seen: list[tuple[str, str]] = []

    def on_done(future: Any, item: str) -> None:
        seen.append((item, future.status))

    drain(None, {ok: "a", lost: "b", errored: "c"}, on_done)  # type: ignore[arg-type]
    assert sorted(seen) == [("a", "finished"), ("b", "finished"), ("c", "error")]
    assert stand_in[0].added == ["lost", "lost"]  # waited for twice: lost, then recomputing
    assert ok.released and lost.released and errored.released


def test_an_error_in_on_done_cancels_what_is_left(stand_in: list[StandInAsCompleted]) -> None:
    first = StandInFuture("first", ["finished"])
    second = StandInFuture("second", ["pending", "finished"])
    cancelled: list[Any] = []

    class Client:
        def cancel(self, futures: list[Any]) -> None:
            cancelled.extend(futures)

    def on_done(future: Any, item: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drain(Client(), {first: "a", second: "b"}, on_done)  # type: ignore[arg-type]
    assert cancelled == [second]
