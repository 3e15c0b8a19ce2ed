"""Line protocol escaping, the durable buffer, and how write failures are classified."""

from __future__ import annotations

import asyncio
import errno
import math
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point
from influxdb_client.rest import ApiException

from observatory_agent.contract import AggregatedMetric, InfluxTarget
from observatory_agent.sinks import buffer as buffer_module
from observatory_agent.sinks import lineproto
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.delivery import REPLAY_IN_FLIGHT, Delivery
from observatory_agent.sinks.influx import (
    InfluxWriter,
    PermanentWriteError,
    RetryableWriteError,
    TokenSource,
    WriterSettings,
    backoff_delay,
    classify,
    influx_message,
)
from tests.env.procs import free_port
from tests.unit.agent import peers


def _metric(name: str = "system.cpu.usage", tags: dict[str, str] | None = None, ts: float = 1_700_000_060.0):
    return AggregatedMetric(
        name=name,
        tags=tags or {},
        timestamp=ts,
        window_start=ts - 60,
        count=6,
        sum=30.5,
        mean=30.5 / 6,
        min=1.0,
        max=10.25,
        last=3.0,
        quantiles={"p50": 4.0, "p95": 9.5, "p99": 10.0, "p99.9": 10.2},
    )


def _scan(line: str, start: int, stops: str) -> int:
    """InfluxDB's rule: a separator counts unless the character before it is a backslash."""
    i = start
    while i < len(line):
        if line[i] in stops and (i == start or line[i - 1] != "\\"):
            return i
        i += 1
    return i


def _parse(line: str) -> tuple[str, list[tuple[str, str]], list[str], str]:
    """A line split the way InfluxDB's parser splits it (numeric fields only)."""
    end = _scan(line, 0, ", ")
    measurement = line[:end]
    tags: list[tuple[str, str]] = []
    i = end
    while line[i] == ",":
        eq = _scan(line, i + 1, "=")
        stop = _scan(line, eq + 1, ", ")
        tags.append((line[i + 1 : eq], line[eq + 1 : stop]))
        i = stop
    assert line[i] == " "
    fields_end = _scan(line, i + 1, " ")
    fields = line[i + 1 : fields_end].split(",")
    return measurement, tags, fields, line[fields_end + 1 :]


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def test_aggregate_becomes_one_line_with_every_field_at_window_end() -> None:
    line = lineproto.encode(_metric(tags={"host": "n1", "core": "0"}))
    assert line == (
        "system.cpu.usage,core=0,host=n1 count=6i,last=3,max=10.25,mean=5.083333333333333,min=1,"
        "p50=4,p95=9.5,p99=10,p99.9=10.2,sum=30.5 1700000060000"
    )


text = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=20)


@settings(max_examples=400, deadline=None)
@given(name=text.filter(bool), tags=st.dictionaries(text, text, max_size=5))
def test_no_input_yields_an_extra_line_or_point(name: str, tags: dict[str, str]) -> None:
    line = lineproto.encode(_metric(name, tags))
    assert "\n" not in line
    assert "\r" not in line
    measurement, parsed_tags, fields, timestamp = _parse(line)
    assert timestamp == "1700000060000"
    assert sorted(f.split("=")[0] for f in fields) == sorted(
        ["count", "last", "max", "mean", "min", "sum", "p50", "p95", "p99", "p99.9"]
    )
    assert len(parsed_tags) == len([k for k, v in tags.items() if k and v])
    assert not measurement.startswith("#")
    plain = set("\\\n\t\r")
    if not plain & set(name) and not name.startswith("#"):
        assert _unescape(measurement) == name
    written = {(_unescape(k), _unescape(v)) for k, v in parsed_tags}
    assert len({k for k, _ in parsed_tags}) == len(parsed_tags)  # no key twice: InfluxDB refuses the line
    for want_key, want_value in tags.items():
        if want_key and want_value and not plain & set(want_key + want_value) and not want_key.startswith("_"):
            assert (want_key, want_value) in written


@settings(max_examples=300, deadline=None)
@given(name=text.filter(bool), tags=st.dictionaries(text, text, max_size=5))
def test_encoding_matches_influxdb_client_point_where_point_is_safe(name: str, tags: dict[str, str]) -> None:
    assume(not name.startswith("#") and "\\" not in name)  # InfluxDB loses those: see lineproto
    assume(all(not k.endswith("\\") and not k.startswith("_") for k in tags))
    metric = _metric(name, tags)
    point = Point(name).time(round(metric.timestamp * 1000), write_precision="ms")
    for k, v in tags.items():
        point.tag(k, v)
    for k, v in {"count": 6, "sum": metric.sum, "mean": metric.mean, "min": 1.0, "max": 10.25, "last": 3.0}.items():
        point.field(k, v)
    for k, v in metric.quantiles.items():
        point.field(k, v)
    assert lineproto.encode(metric) == point.to_line_protocol()


number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            text.filter(bool),
            st.dictionaries(text, text, max_size=4),
            st.dictionaries(st.sampled_from(["p50", "p99.9", "p%", "last", "count", "a b", "p,1"]), number),
            st.lists(number, min_size=5, max_size=5),
            st.integers(min_value=0, max_value=2**60),
        ),
        max_size=6,
    )
)
def test_encode_many_equals_encoding_each_metric_alone(
    rows: list[tuple[str, dict[str, str], dict[str, float], list[float], int]],
) -> None:
    """The batch encoder's shared caches and line template change nothing, whatever the values."""
    metrics = []
    for name, tags, quantiles, (last, hi, mean, lo, total), count in rows * 2:  # repeats hit the caches
        metric = AggregatedMetric.model_construct(
            name=name, tags=tags, timestamp=1_700_000_060.0, window_start=1_700_000_000.0, count=count,
            sum=total, mean=mean, min=lo, max=hi, last=last, quantiles=quantiles,
        )  # fmt: skip
        metrics.append(metric)
    assert lineproto.encode_many(metrics) == [lineproto.encode(m) for m in metrics]


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(values=st.lists(finite, min_size=8, max_size=8), count=st.integers(min_value=0, max_value=2**53 - 1))
def test_fast_float_text_equals_repr_at_every_magnitude(values: list[float], count: int) -> None:
    """Every finite value takes the batch path; its lines equal ``encode``'s (``repr``), exponents included."""
    last, hi, mean, lo, total, p50, p95, p99 = values
    metric = AggregatedMetric.model_construct(
        name="m", tags={"node": "n"}, timestamp=1_700_000_060.0, window_start=1_700_000_000.0, count=count,
        sum=total, mean=mean, min=lo, max=hi, last=last, quantiles={"p50": p50, "p95": p95, "p99": p99},
    )  # fmt: skip
    if math.isfinite(sum(values)):
        assert lineproto.encode_many([metric]) == [lineproto.encode(metric)]


def test_values_orjson_writes_differently_from_repr_still_get_reprs_text() -> None:
    for value in (1e16, 1.5e300, 1e-05, 2.7228186427695934e-05, 6.7e-08, 5e-324, -0.0, 0.0001, 123.0):
        metric = _metric("m", {}).model_copy(update={"last": value})
        (line,) = lineproto.encode_many([metric])
        assert line == lineproto.encode(metric)
        text = repr(value)
        assert f"last={text[:-2] if text.endswith('.0') else text}," in line, line


def test_tag_value_ending_in_backslash_cannot_swallow_the_separator() -> None:
    line = lineproto.encode(_metric("m\\", {"k\\": "v\\"}))
    _, tags, fields, _ = _parse(line)
    assert len(tags) == 1
    assert len(fields) == 10


def test_reserved_and_empty_tags_are_made_safe() -> None:
    line = lineproto.encode(_metric("#m", {"_field": "x", "": "y", "empty": ""}))
    assert line.startswith("_m,tag_field=x ")


def test_a_reserved_tag_key_never_collides_with_the_name_it_is_renamed_to() -> None:
    """Issue 10: ``_x`` and ``tag_x`` both became ``tag_x``, a line InfluxDB refuses."""
    line = lineproto.encode(_metric("m", {"_x": "a", "tag_x": "b", "tagtag_x": "c"}))
    assert line.startswith("m,tag_x=b,tagtag_x=c,tagtagtag_x=a ")
    (fast,) = lineproto.encode_many([_metric("m", {"_x": "a", "tag_x": "b", "tagtag_x": "c"})])
    assert fast == line


def test_an_empty_measurement_is_refused_not_written_as_a_broken_line() -> None:
    """Issue 10: an empty measurement name passed into the line protocol."""
    with pytest.raises(ValueError, match="empty"):
        lineproto.encode(_metric(""))
    skipped: list[str] = []
    lines = lineproto.encode_many([_metric(""), _metric("ok")], skipped=skipped)
    assert [line.split(" ")[0] for line in lines] == ["ok"]
    assert skipped == ["''"]


def test_the_agents_own_point_has_integer_counters_and_a_float_age() -> None:
    line = lineproto.encode_point("observatory.agent", {"node": "n 1", "_x": "y"}, {"series": 3, "age": 1.5}, 60.0)
    assert line == "observatory.agent,node=n\\ 1,tag_x=y age=1.5,series=3i 60000"


# --- durable buffer ------------------------------------------------------------------------


def test_buffer_replays_batches_in_order_after_reopen(tmp_path: Path) -> None:
    buf = DurableBuffer(tmp_path, 1 << 20)
    buf.append(["a 1", "b 2"])
    buf.append(["c 3"])
    buf.close()
    reopened = DurableBuffer(tmp_path, 1 << 20)
    assert reopened.points == 3
    first = reopened.peek()
    assert first is not None
    assert first.lines == ("a 1", "b 2")
    reopened.ack(first)
    second = reopened.peek()
    assert second is not None
    assert second.lines == ("c 3",)
    reopened.ack(second)
    assert reopened.peek() is None
    assert reopened.disk_bytes == 0
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # every segment deleted once delivered


def test_buffer_survives_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from observatory_agent.sinks.buffer import DurableBuffer
        buf = DurableBuffer(Path({str(tmp_path)!r}), 1 << 20)
        for i in range(5):
            buf.append([f"m v={{i}} {{i}}"])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    buf = DurableBuffer(tmp_path, 1 << 20)
    got = []
    while (record := buf.peek()) is not None:
        got.extend(record.lines)
        buf.ack(record)
    assert got == [f"m v={i} {i}" for i in range(5)]


def test_torn_tail_record_is_ignored_and_earlier_ones_kept(tmp_path: Path) -> None:
    buf = DurableBuffer(tmp_path, 1 << 20)
    buf.append(["ok 1"])
    buf.append(["torn 2"])
    buf.close()
    (segment,) = tmp_path.glob("seg-*")
    segment.write_bytes(segment.read_bytes()[:-3])  # a write cut short by a crash
    reopened = DurableBuffer(tmp_path, 1 << 20)
    record = reopened.peek()
    assert record is not None
    assert record.lines == ("ok 1",)
    assert len(reopened) == 1
    assert reopened.corrupt_records == 1


def test_full_buffer_drops_oldest_and_counts_points(tmp_path: Path) -> None:
    buf = DurableBuffer(tmp_path, 4096, segment_bytes=1024)
    line = "x" * 200
    for i in range(40):
        buf.append([f"{i} {line}", f"{i} {line}"])
    assert buf.disk_bytes <= 4096
    assert buf.dropped_points > 0
    assert buf.points + buf.dropped_points == 80
    record = buf.peek()
    assert record is not None
    assert not record.lines[0].startswith("0 ")  # the oldest went first
    newest = None
    while (r := buf.peek()) is not None:
        newest = r
        buf.ack(r)
    assert newest is not None
    assert newest.lines[0].startswith("39 ")


def test_batch_larger_than_the_whole_buffer_is_dropped_and_counted(tmp_path: Path) -> None:
    buf = DurableBuffer(tmp_path, 4096)
    assert buf.append(["y" * 5000]) == 1
    assert buf.peek() is None


def test_appends_after_a_fully_acked_segment_start_a_new_one(tmp_path: Path) -> None:
    buf = DurableBuffer(tmp_path, 1 << 20)
    buf.append(["a 1"])
    r = buf.peek()
    assert r is not None
    buf.ack(r)
    buf.append(["b 2"])
    r2 = buf.peek()
    assert r2 is not None
    assert r2.lines == ("b 2",)


def _drain_lines(buf: DurableBuffer) -> list[str]:
    lines: list[str] = []
    while (record := buf.peek()) is not None:
        lines.extend(record.lines)
        buf.ack(record)
    return lines


def test_a_torn_append_is_cut_back_so_later_records_stay_aligned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10, defect 3: a half-written append (disk full) left bytes the offsets did not know."""
    buf = DurableBuffer(tmp_path, 1 << 20)
    buf.append(["before 1"])
    real = buffer_module._write

    def half_then_full(fd: int, data: memoryview) -> int:
        if len(data) > 8:
            real(fd, data[:7])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(buffer_module, "_write", half_then_full)
    buf.append(["torn 2"])
    monkeypatch.setattr(buffer_module, "_write", real)
    buf.append(["after 3"])
    assert buf.write_errors == {"ENOSPC": 1}
    assert buf.unpersisted_points == 1
    buf.close()
    reopened = DurableBuffer(tmp_path, 1 << 20)
    assert reopened.corrupt_records == 0
    assert _drain_lines(reopened) == ["before 1", "after 3"]  # the torn one never reached the disk
    assert _drain_lines(buf) == ["before 1", "torn 2", "after 3"]  # in order, from memory meanwhile


def test_batches_the_disk_refuses_are_kept_in_memory_in_order_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = DurableBuffer(tmp_path, 1 << 20, max_memory_bytes=100)

    def full(_fd: int, _data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    buf.append(["disk 0"])
    monkeypatch.setattr(buffer_module, "_write", full)
    for i in range(1, 8):
        buf.append([f"memory {i} " + "x" * 10])
    assert buf.write_errors == {"ENOSPC": 7}
    assert buf.last_write_error is not None
    assert buf.last_write_error.startswith("ENOSPC")
    assert buf.dropped_points > 0  # past max_memory_bytes the oldest in memory went
    assert buf.points + buf.dropped_points == 8
    lines = _drain_lines(buf)
    assert lines[0] == "disk 0"
    assert lines[-1].startswith("memory 7 ")
    assert lines == sorted(lines, key=lambda line: int(line.split()[1]))


async def test_a_window_is_on_disk_before_any_request_is_sent(tmp_path: Path) -> None:
    """Issue 10, defect 1: a hung InfluxDB held windows in memory until SIGTERM lost them."""
    buffer = DurableBuffer(tmp_path, 1 << 20)

    class Hung:
        async def send(self, payload: bytes, *, budget: float) -> None:
            await asyncio.sleep(3600)

    delivery = Delivery(Hung(), buffer, batch_size=2)  # type: ignore[arg-type]
    delivery.enqueue(["a 1", "b 2", "c 3"])
    assert len(buffer) == 2  # one record per batch
    drain = asyncio.create_task(delivery.drain(budget=60))
    await asyncio.sleep(0.05)
    drain.cancel()  # SIGTERM during the hang
    buffer.close()  # the process ends; its lock goes with it
    assert _drain_lines(DurableBuffer(tmp_path, 1 << 20)) == ["a 1", "b 2", "c 3"]


async def test_a_refused_batch_is_counted_with_influxdbs_message_and_its_siblings_are_written(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path, 1 << 20)
    message = (
        'partial write: field type conflict: input field "count" is type float, already exists as type integer '
        "dropped=1"
    )
    writer = _FakeWriter(fail={"m v=2 2": PermanentWriteError(422, message)})
    delivery = Delivery(writer, buffer, batch_size=2)  # type: ignore[arg-type]
    delivery.enqueue([f"m v={i} {i}" for i in range(6)])
    assert await delivery.drain(budget=10)
    assert sorted(writer.sent) == ["m v=0 0", "m v=2 2", "m v=4 4"]
    assert delivery.stats.rejected_points == 1  # InfluxDB's dropped=1, not the whole batch
    assert delivery.stats.points_written == 5
    assert delivery.stats.errors == {"rejected": 1}
    assert delivery.stats.last_error is not None
    assert "field type conflict" in delivery.stats.last_error
    assert len(buffer) == 0


async def test_a_wrong_token_keeps_the_batches_for_after_the_fix(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path, 1 << 20)
    writer = _FakeWriter(fail={"m v=0 0": PermanentWriteError(401, "unauthorized access")})
    delivery = Delivery(writer, buffer)  # type: ignore[arg-type]
    delivery.enqueue(["m v=0 0"])
    assert not await delivery.drain(budget=10)
    assert delivery.stats.errors == {"config": 1}
    assert buffer.points == 1
    writer.fail = set()
    assert await delivery.drain(budget=10)
    assert delivery.stats.points_written == 1


def test_a_rotated_token_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old\n")
    source = TokenSource(InfluxTarget(token_file=str(path)))
    assert source.get() == "old"
    replacement = tmp_path / "token.new"
    replacement.write_text("new")
    replacement.replace(path)  # as the kubelet swaps a Secret: a new file behind the same name
    assert source.get() == "new"


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (401, False)])
def test_http_status_decides_whether_a_write_is_retried(status: int, retryable: bool) -> None:
    exc = ApiException(status=status, reason="x")
    exc.body = b'{"code":"invalid","message":"partial write: field type conflict"}'
    err = classify(exc)
    assert isinstance(err, RetryableWriteError if retryable else PermanentWriteError)
    assert "field type conflict" in str(err)


def test_network_failures_are_retryable() -> None:
    assert isinstance(classify(TimeoutError("read timed out")), RetryableWriteError)
    assert isinstance(classify(ConnectionRefusedError(111, "refused")), RetryableWriteError)


def test_influx_message_is_extracted_from_json_or_kept_as_text() -> None:
    assert influx_message(b'{"code":"unauthorized","message":"unauthorized access"}') == "unauthorized access"
    assert influx_message("plain text\n") == "plain text"


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        bound = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.8  # jitter spreads over the whole range


# --- the writer ----------------------------------------------------------------------------


class _FakeInflux:
    """Stands in for ``InfluxWriter._post``: records bodies, fails on cue, counts concurrency."""

    def __init__(self, failures: dict[str, list[Exception]] | None = None, delay: float = 0.02) -> None:
        self.failures = failures or {}
        self.delay = delay
        self.accepted: list[tuple[str, ...]] = []
        self.attempts = 0
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, payload: bytes) -> None:
        lines = payload.decode().split("\n")
        with self._lock:
            self.attempts += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            queue = self.failures.get(lines[0])
            if queue:
                raise queue.pop(0)
            with self._lock:
                self.accepted.append(tuple(lines))
        finally:
            with self._lock:
                self.active -= 1


def _writer(fake: _FakeInflux, **settings: Any) -> InfluxWriter:
    async def no_sleep(_: float) -> None:
        return None

    writer = InfluxWriter(
        WriterSettings(url="http://127.0.0.1:1", org="o", bucket="b", token="t", **settings),
        rng=random.Random(1),
        sleep=no_sleep,
    )
    writer._post = fake  # type: ignore[method-assign]
    return writer


async def test_a_writes_batches_go_out_concurrently_but_bounded() -> None:
    fake = _FakeInflux()
    writer = _writer(fake, batch_size=10, max_in_flight=3)
    lines = [f"m v={i} {i}" for i in range(95)]
    await writer.write(lines, budget=10)
    writer.close()
    assert fake.peak == 3
    assert sorted(line for batch in fake.accepted for line in batch) == sorted(lines)
    assert len(fake.accepted) == 10


async def test_a_failing_batch_is_retried_alone_and_the_write_succeeds() -> None:
    fake = _FakeInflux({"m v=20 20": [RetryableWriteError("HTTP 503: busy"), RetryableWriteError("timeout")]})
    writer = _writer(fake, batch_size=10, max_in_flight=4)
    await writer.write([f"m v={i} {i}" for i in range(40)], budget=10)
    writer.close()
    assert fake.attempts == 4 + 2  # only the failing batch went again
    assert len(fake.accepted) == 4


async def test_a_refused_batch_fails_the_write_but_never_cancels_its_siblings() -> None:
    """Issue 10, defect 4: one refused batch cancelled the others, whose points were then dropped."""
    fake = _FakeInflux({"m v=10 10": [PermanentWriteError(422, "field type conflict")]})
    writer = _writer(fake, batch_size=10, max_in_flight=2)
    with pytest.raises(PermanentWriteError, match="field type conflict"):
        await writer.write([f"m v={i} {i}" for i in range(40)], budget=10)
    writer.close()
    assert fake.attempts == 4  # not retried
    assert sorted(batch[0] for batch in fake.accepted) == ["m v=0 0", "m v=20 20", "m v=30 30"]


async def test_a_batch_still_failing_when_the_budget_ends_fails_the_write() -> None:
    fake = _FakeInflux({"m v=0 0": [RetryableWriteError("HTTP 503: busy")] * 100}, delay=0.0)
    writer = _writer(fake, batch_size=10, max_in_flight=2, base_delay=0.4, max_delay=0.4)
    clock = [0.0]

    async def advance(seconds: float) -> None:
        clock[0] += seconds

    writer._sleep = advance
    writer._clock = lambda: clock[0]
    with pytest.raises(RetryableWriteError, match="busy"):
        await writer.write([f"m v={i} {i}" for i in range(20)], budget=2.0)
    writer.close()
    assert clock[0] <= 2.0


def test_the_writer_loads_only_influxdb_clients_write_path(tmp_path: Path) -> None:
    """No generated domain models (~15 MB): and a later full import still works, sharing classes."""
    script = textwrap.dedent(
        """
        import sys
        from observatory_agent.sinks.influx import InfluxWriter, WriterSettings, classify, PermanentWriteError
        w = InfluxWriter(WriterSettings(url="http://127.0.0.1:1", org="o", bucket="b", token="t"))
        service = w._ensure_service()
        assert type(service).__name__ == "WriteService", service
        assert "influxdb_client.domain" not in sys.modules, "domain models were imported"
        assert "influxdb_client.client.write_api" not in sys.modules
        assert "influxdb_client" not in sys.modules
        import influxdb_client
        from influxdb_client.rest import ApiException
        from influxdb_client.client.write_api import SYNCHRONOUS
        assert influxdb_client.WriteService is type(service)
        exc = ApiException(status=400, reason="x")
        exc.body = b'{"message": "bad"}'
        assert isinstance(classify(exc), PermanentWriteError)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _FakeWriter:
    """Accepts or refuses whole writes by their first line; tracks concurrency."""

    def __init__(self, fail: set[str] | dict[str, Exception] | None = None) -> None:
        self.fail: set[str] | dict[str, Exception] = fail or set()
        self.sent: list[str] = []
        self.active = 0
        self.peak = 0

    async def send(self, payload: bytes, *, budget: float) -> None:
        first = payload.decode().split("\n")[0]
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.01)
            self.sent.append(first)
            error = self.fail.get(first) if isinstance(self.fail, dict) else None
            if error is not None:
                raise error
            if first in self.fail:
                raise RetryableWriteError("HTTP 503: busy")
        finally:
            self.active -= 1


async def test_replay_probes_the_oldest_then_goes_concurrent_and_acks_in_order(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path, 1 << 20)
    for i in range(10):
        buffer.append([f"m v={i} {i}"])
    writer = _FakeWriter(fail={"m v=6 6"})
    delivery = Delivery(writer, buffer)  # type: ignore[arg-type]
    await delivery.drain(budget=10)
    assert writer.sent[0] == "m v=0 0"  # alone, before anything else
    assert writer.peak == REPLAY_IN_FLIGHT
    remaining = [r.lines[0] for r in buffer.peek_many(100)]
    # 6 failed: it and everything younger stay, in order, even 7..8 that went through
    assert remaining == [f"m v={i} {i}" for i in range(6, 10)]
    assert delivery.stats.errors == {"retryable": 1}
    writer.fail.clear()
    await delivery.drain(budget=10)
    assert len(buffer) == 0


async def test_replay_sends_the_next_batch_when_the_oldest_is_answered_not_the_slowest(tmp_path: Path) -> None:
    """InfluxDB keeps work queued: a slow batch holds back only the batches behind it in the window."""
    buffer = DurableBuffer(tmp_path, 1 << 20)
    for i in range(8):
        buffer.append([f"m v={i} {i}"])
    started: dict[int, float] = {}
    finished: dict[int, float] = {}

    class Writer:
        async def send(self, payload: bytes, *, budget: float) -> None:
            i = int(payload.decode().split()[-1])
            started[i] = time.monotonic()
            await asyncio.sleep(0.3 if i == 4 else 0.01)
            finished[i] = time.monotonic()

    assert await Delivery(Writer(), buffer).drain(budget=10)  # type: ignore[arg-type]
    assert started[5] < finished[4]  # 1..4 went out together; 5 followed 1, not the slow 4
    assert len(buffer) == 0


async def test_replay_during_an_outage_is_one_request(tmp_path: Path) -> None:
    buffer = DurableBuffer(tmp_path, 1 << 20)
    for i in range(5):
        buffer.append([f"m v={i} {i}"])
    writer = _FakeWriter(fail={"m v=0 0"})
    await Delivery(writer, buffer).drain(budget=10)  # type: ignore[arg-type]
    assert writer.sent == ["m v=0 0"]
    assert len(buffer) == 5


def test_a_first_write_of_many_batches_loads_the_client_once_and_fails_retryably() -> None:
    """Several threads reach the lazy import together; a refused connection is retryable."""
    script = textwrap.dedent(
        """
        import asyncio, socket, sys
        from observatory_agent.sinks.influx import InfluxWriter, RetryableWriteError, WriterSettings
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        w = InfluxWriter(WriterSettings(url=f"http://127.0.0.1:{port}", org="o", bucket="b", token="t",
                                        batch_size=10, max_in_flight=4))
        try:
            asyncio.run(w.write([f"m v={i} {i}" for i in range(100)], budget=0.0))
        except RetryableWriteError as exc:
            print("retryable", "Connection" in str(exc) or "connect" in str(exc).lower())
        assert "influxdb_client.domain" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "retryable True"


async def test_a_connection_that_failed_is_not_reused_for_the_next_write() -> None:
    """A write that failed on a kept-alive connection to the wrong peer: the retry connects afresh."""
    port = free_port()
    wrong = peers.serve(port, 503)
    writer = InfluxWriter(WriterSettings(url=f"http://127.0.0.1:{port}", org="o", bucket="b", token="t"))
    try:
        with pytest.raises(RetryableWriteError):
            await writer.write(["m v=1 1"], budget=0.0)
        assert wrong.requests == 1
        wrong.stop_listening()  # the one kept alive would still answer 503
        right = peers.serve(port, 204)
        try:
            await writer.write(["m v=1 1"], budget=0.0)
            assert (right.requests, wrong.requests) == (1, 1)
        finally:
            right.stop_listening()
            right.server_close()
    finally:
        writer.close()
        wrong.server_close()


def test_one_process_at_a_time_owns_a_buffer_directory(tmp_path: Path) -> None:
    """A buffer on the node's disk outlives pods: an old and a new agent must never append to it together."""
    first = DurableBuffer(tmp_path, 1 << 20)
    first.append(["a 1"])
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from observatory_agent.sinks.buffer import BufferLockedError, DurableBuffer
        try:
            DurableBuffer(Path({str(tmp_path)!r}), 1 << 20, lock_timeout=0.3)
        except BufferLockedError as exc:
            print("locked:", exc)
        """
    )
    held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert held.stdout.startswith("locked:")
    assert "another agent holds" in held.stdout
    first.close()
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert free.stdout == ""


def test_a_buffer_started_while_another_process_holds_it_waits_in_memory_then_takes_over(tmp_path: Path) -> None:
    """A rollout that starts the new agent before the old one stops: never two writers, never a lost batch."""
    old = DurableBuffer(tmp_path, 1 << 20, owner="agent-old")
    old.append(["old 1"])
    on_disk = sorted(p.name for p in tmp_path.iterdir())

    new = DurableBuffer(tmp_path, 1 << 20, wait_for_lock=False, owner="agent-new")
    assert not new.owned
    assert new.holder() == "agent-old"
    assert new.waiting_since is not None
    assert new.points == 0  # the old owner's batches are not ours to send yet
    new.append(["new 2"])
    new.append(["new 3"])
    assert new.unpersisted_points == 2
    assert new.disk_bytes == 0
    assert not new.claim()
    old.append(["old 4"])  # the old agent's final flush, while the new one already runs
    assert sorted(p.name for p in tmp_path.iterdir()) == on_disk  # the new one wrote nothing
    old.close()

    assert new.claim()
    assert new.owned
    assert new.holder() == "agent-new"
    assert new.waiting_since is None
    assert new.unpersisted_points == 0
    new.close()
    assert _drain_lines(DurableBuffer(tmp_path, 1 << 20)) == ["old 1", "old 4", "new 2", "new 3"]


def test_a_batch_sent_while_its_buffer_is_claimed_is_sent_again_not_lost(tmp_path: Path) -> None:
    old = DurableBuffer(tmp_path, 1 << 20)
    old.append(["old 1"])
    new = DurableBuffer(tmp_path, 1 << 20, wait_for_lock=False)
    new.append(["new 2"])
    in_flight = new.peek()
    assert in_flight is not None
    old.close()
    assert new.claim()
    new.ack(in_flight)  # acknowledged after the claim moved it behind the old batches: ignored
    assert _drain_lines(new) == ["old 1", "new 2"]


def test_batches_held_for_a_buffer_another_process_owns_are_bounded_and_counted(tmp_path: Path) -> None:
    old = DurableBuffer(tmp_path, 1 << 20)
    new = DurableBuffer(tmp_path, 1 << 20, wait_for_lock=False, max_memory_bytes=100)
    for i in range(8):
        new.append([f"held {i} " + "x" * 10])
    assert new.dropped_points > 0
    assert new.points + new.dropped_points == 8
    assert new.write_errors == {}  # nothing failed on disk: it was never touched
    lines = _drain_lines(new)
    assert lines[-1].startswith("held 7 ")
    old.close()
