"""The dynamic batcher on its own: coalescing, limits, errors, the idle path, the queue bound.

Batches are held open with events rather than sleeps, so what shares a batch is decided by
the order of events, not by timing.
"""

from __future__ import annotations

import asyncio

import pytest

from margin.batching.batcher import Batcher, BatchLimits, split_int_by_weight
from margin.errors import Overloaded, UpstreamError


class Model:
    """A batch function that records each batch and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if any(x.startswith("poison") for x in items):
            raise RuntimeError("model failed on this batch")
        return [x.upper() for x in items]


async def _occupy(b: Batcher, model: Model, item: str = "first") -> asyncio.Task:
    """Start one batch and keep it running, so that what follows queues behind it."""
    model.hold()
    task = asyncio.create_task(b.submit(item))
    await model.started.wait()
    return task


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_requests_coalesce_and_results_go_to_their_callers():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=32, max_wait_ms=0))
        first = await _occupy(b, model)
        rest = [asyncio.create_task(b.submit(f"q{i}")) for i in range(10)]
        await asyncio.sleep(0)
        assert b.queued == 10
        model.release()
        outs = await asyncio.gather(first, *rest)
        return model, outs

    model, outs = run(go())
    assert [len(x) for x in model.batches] == [1, 10]
    assert outs[0].result == "FIRST" and outs[0].immediate
    for i, out in enumerate(outs[1:]):
        assert out.result == f"Q{i}"
        assert out.batch_items == 10 and out.batch_size == 10 and not out.immediate
        assert out.batch_id == outs[1].batch_id != outs[0].batch_id


def test_max_batch_size_counts_item_sizes():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=4, max_wait_ms=0))
        first = await _occupy(b, model)
        sized = [asyncio.create_task(b.submit(f"a{i}", size=s)) for i, s in enumerate([3, 1, 1, 2])]
        singles = [asyncio.create_task(b.submit(f"b{i}")) for i in range(5)]
        await asyncio.sleep(0)
        model.release()
        await asyncio.gather(first, *sized, *singles)
        return model

    model = run(go())
    # sizes 3+1 | 1+2+1 | 1+1+1+1 (the first batch is the occupier)
    assert [len(x) for x in model.batches] == [1, 2, 3, 4]
    assert model.batches[1] == ["a0", "a1"]


def test_max_batch_tokens_closes_a_batch():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=100, max_batch_tokens=10, max_wait_ms=0))
        first = await _occupy(b, model)
        tasks = [asyncio.create_task(b.submit(f"t{i}", tokens=4)) for i in range(5)]
        big = asyncio.create_task(b.submit("huge", tokens=50))  # over the limit: goes alone
        await asyncio.sleep(0)
        model.release()
        await asyncio.gather(first, *tasks, big)
        return model

    model = run(go())
    assert [len(x) for x in model.batches] == [1, 2, 2, 1, 1]
    assert model.batches[-1] == ["huge"]


def test_failed_batch_fails_each_of_its_callers_and_no_other():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=3, max_wait_ms=0))
        first = await _occupy(b, model)
        batch_a = [asyncio.create_task(b.submit(x)) for x in ("poison-1", "ok-1", "ok-2")]
        batch_b = [asyncio.create_task(b.submit(x)) for x in ("ok-3", "ok-4")]
        await asyncio.sleep(0)
        model.release()
        return model, await asyncio.gather(first, *batch_a, *batch_b, return_exceptions=True)

    model, outs = run(go())
    assert model.batches[1] == ["poison-1", "ok-1", "ok-2"]
    assert outs[0].result == "FIRST"
    for out in outs[1:4]:
        assert isinstance(out, RuntimeError) and "failed on this batch" in str(out)
    assert [o.result for o in outs[4:]] == ["OK-3", "OK-4"]


def test_wrong_number_of_results_fails_the_batch():
    async def short(items: list[str]) -> list[str]:
        return items[:-1]

    async def go():
        b = Batcher(short, BatchLimits(max_batch_size=8, max_wait_ms=0))
        return await asyncio.gather(b.submit("x"), return_exceptions=True)

    (out,) = run(go())
    assert isinstance(out, UpstreamError) and "returned 0 results" in str(out)


def test_an_exception_as_one_result_fails_only_that_caller():
    async def partial(items: list[str]) -> list[object]:
        return [ValueError(x) if x == "bad" else x for x in items]

    async def go():
        b = Batcher(partial, BatchLimits(max_wait_ms=0))
        # The first goes at once, the other two queue and share the next call.
        return await asyncio.gather(b.submit("alone"), b.submit("good"), b.submit("bad"),
                                    return_exceptions=True)

    alone, good, bad = run(go())
    assert alone.result == "alone" and alone.batch_items == 1
    assert good.result == "good" and good.batch_items == 2
    assert isinstance(bad, ValueError)


def test_idle_request_goes_straight_through_without_waiting():
    async def go():
        model = Model()
        # A wait this long would time the test out if the idle path ever took it.
        b = Batcher(model, BatchLimits(max_batch_size=32, max_wait_ms=60_000))
        out = await b.submit("alone")
        return b, out

    b, out = run(go())
    assert out.immediate and out.wait_ms == 0.0 and out.batch_items == 1
    assert b.stats.immediate == 1 and b._pump_task is None  # never entered the wait path


def test_a_lone_client_sending_back_to_back_is_never_held():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=32, max_wait_ms=60_000))
        return [await b.submit(f"q{i}") for i in range(5)]

    outs = run(go())
    assert all(o.immediate and o.wait_ms == 0.0 for o in outs)


async def _batch_of(b: Batcher, model: Model, n: int) -> None:
    """Run a batch of ``n`` items (one occupier, then n queued together behind it); ``n``
    must fill the batch or the wait is ``max_wait_ms``."""
    first = await _occupy(b, model)
    rest = [asyncio.create_task(b.submit(f"w{i}")) for i in range(n)]
    await asyncio.sleep(0)
    model.release()
    model.gate = None
    await asyncio.gather(first, *rest)


def test_after_a_quiet_period_the_next_request_is_immediate_again():
    now = [100.0]

    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=3, max_wait_ms=50), clock=lambda: now[0])
        await _batch_of(b, model, 3)  # a batch of several just ended: its callers may return
        assert not b._quiet(now[0])
        now[0] += 0.100  # well past max_wait_ms: quiet again
        return await b.submit("later")

    assert run(go()).immediate


def test_right_after_a_batch_of_several_requests_wait_to_fill_the_next_one():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=32, max_wait_ms=200))
        await _batch_of(b, model, 3)
        outs = await asyncio.gather(*(b.submit(f"x{i}") for i in range(5)))
        return model, outs

    model, outs = run(go())
    assert [len(x) for x in model.batches] == [1, 3, 5]
    assert all(not o.immediate for o in outs)
    assert all(o.batch_items == 5 for o in outs)


def test_full_batch_leaves_without_waiting_for_the_timer():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=4, max_wait_ms=60_000))
        await _batch_of(b, model, 4)
        return await asyncio.gather(*(b.submit(f"x{i}") for i in range(8))), model

    outs, model = run(go())
    assert [len(x) for x in model.batches] == [1, 4, 4, 4]


def test_queue_bound_rejects_with_retry_after():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=1, max_wait_ms=0, max_queue=2))
        first = await _occupy(b, model)
        queued = [asyncio.create_task(b.submit(f"q{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await b.submit("one too many")
        model.release()
        await asyncio.gather(first, *queued)
        return b, info.value

    b, exc = run(go())
    assert exc.status_code == 503
    assert int(exc.headers()["retry-after"]) >= 1
    assert b.stats.rejected == 1


def test_a_caller_that_goes_away_does_not_cancel_the_batch():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_batch_size=8, max_wait_ms=0))
        first = await _occupy(b, model)
        leaving = asyncio.create_task(b.submit("leaving"))
        staying = asyncio.create_task(b.submit("staying"))
        await asyncio.sleep(0)
        leaving.cancel()
        model.release()
        return model, await first, await staying

    model, first, staying = run(go())
    assert staying.result == "STAYING" and first.result == "FIRST"
    assert ["leaving"] not in model.batches and model.batches[-1] == ["staying"]


def test_close_fails_what_is_queued():
    async def go():
        model = Model()
        b = Batcher(model, BatchLimits(max_wait_ms=0))
        first = await _occupy(b, model)
        queued = asyncio.create_task(b.submit("late"))
        await asyncio.sleep(0)
        closing = asyncio.create_task(b.aclose())
        await asyncio.sleep(0)
        model.release()
        await closing
        return await first, await asyncio.gather(queued, return_exceptions=True)

    first, (late,) = run(go())
    assert first.result == "FIRST"
    assert isinstance(late, Overloaded)


@pytest.mark.parametrize("total,weights,expected", [
    (10, [1, 1, 1], [4, 3, 3]),
    (7, [0, 0], [4, 3]),
    (100, [5, 15], [25, 75]),
    (3, [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]),
])
def test_integer_shares_add_up(total, weights, expected):
    shares = split_int_by_weight(total, weights)
    assert sum(shares) == total
    assert sorted(shares, reverse=True) == sorted(expected, reverse=True)


def test_the_next_batch_starts_before_the_finished_batchs_callers_resume():
    # The model must not idle while the event loop answers the batch that just finished
    # (in the gateway each caller's continuation encodes and writes its HTTP response).
    async def main():
        order: list[str] = []
        model = Model()

        async def fn(items: list[str]) -> list[str]:
            order.append("batch " + ",".join(items))
            return await model(items)

        async def caller(item: str) -> str:
            out = await b.submit(item)
            order.append(f"caller of {item} resumes")
            return out.result

        b = Batcher(fn, BatchLimits(max_batch_size=2, max_wait_ms=0))
        model.hold()
        gate = model.gate
        first = asyncio.create_task(caller("a"))
        await model.started.wait()
        queued = [asyncio.create_task(caller(x)) for x in ("b", "c")]
        await asyncio.sleep(0)
        model.gate = None  # later batches run straight through
        gate.set()
        assert await first == "A"
        assert [await t for t in queued] == ["B", "C"]
        assert order.index("batch b,c") < order.index("caller of a resumes"), order

    run(main())
