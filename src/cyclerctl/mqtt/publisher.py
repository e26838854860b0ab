"""Outbox publisher: committed journal rows -> broker, QoS 1, nothing lost.

- Live: each poll reads what was committed since the last one (``seq`` greater than what was
  published) and publishes it at once, in batches of ≤ 200 samples that never span a step.
- Acks: a batch counts as delivered when the broker's PUBACK arrives; the acknowledged watermark per
  (channel, stream) goes to the journal's ``outbox`` table.
- Reconnect: whatever was not acknowledged (in flight when the link died, or committed while it was
  down) is backlog. It is resent from the journal on ``ch/{ch}/replay`` (samples) or on its own topic
  (events, metrics), at a bounded rate so live data stays current. Consumers de-duplicate by seq.
- Memory: at most `max_inflight` messages are outstanding and at most `read_limit` rows are read per
  channel and poll. The journal is the buffer, however long the broker is away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from ..store.journal import CommittedFeed
from . import payloads
from .client import BrokerAddress, MqttError
from .outbox import STREAMS, JournalSource, OutboxWriter, Watermark
from .topics import Topics, topic_id

log = logging.getLogger("cyclerctl.mqtt")

# publish(topic, payload, retain, on_ack): hands a QoS 1 message over, on_ack() on its PUBACK
Publish = Callable[[str, bytes, bool, Callable[[], None]], None]


@dataclass
class PublisherOptions:
    """Tuning of the publisher (defaults suit 1–256 channels at 1–10 Hz)."""

    poll_interval: float = 0.02     # s between cheap "anything committed?" checks
    rows_interval: float = 0.2      # s, minimum period of event and metric reads (low-rate streams)
    max_batch: int = payloads.MAX_BATCH_SAMPLES
    max_inflight: int = 64          # outstanding QoS 1 publishes (memory bound)
    read_limit: int = 2000          # rows read per channel and stream per poll
    feed_limit: int = 20_000        # rows taken per channel and poll from the commit feed
    feed_grace: float = 0.25        # s to wait for committed rows to arrive on the feed before reading them
    replay_rate: float = 200.0      # backlog/replay messages per second (≤ 200 samples each)
    state_interval: float = 1.0     # s, minimum period of a channel's retained state
    outbox_interval: float = 0.5    # s between outbox watermark writes
    drain_timeout: float = 15.0     # s to publish what is committed when asked to stop
    ack_timeout: float = 10.0       # s without any PUBACK while publishes are outstanding: reconnect
    max_replay_requests: int = 16   # pending replay requests per channel


@dataclass
class ChannelOut:
    """Publishing state of one channel."""

    ch: str
    run: str
    descriptor: str
    marks: dict[str, Watermark] = field(default_factory=lambda: {s: Watermark() for s in STREAMS})
    live_next: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    backlog: deque = field(default_factory=deque)     # (stream, lo, hi) resent after reconnect
    requests: deque = field(default_factory=deque)    # (stream, lo, hi) asked for by replay commands
    last_sample: tuple | None = None
    state_due: bool = True
    state_sent: float = 0.0
    desc_sent: bool = False


class Publisher:
    """Publishes one run journal. Survives reconnects: `serve` is called once per connection."""

    def __init__(self, source: JournalSource, topics: Topics, options: PublisherOptions | None = None,
                 feed: CommittedFeed | None = None) -> None:
        self.source = source
        self.feed = feed  # committed rows handed over by the journal writer in this process
        self.topics = topics
        self.opt = options or PublisherOptions()
        self.channels: dict[str, ChannelOut] = {}
        self.by_topic_id: dict[str, str] = {}
        self.sess = 0
        self.columns = source.sample_columns
        self._saved: dict[tuple[str, str], int] = {}
        self._inflight = 0
        self.max_inflight_seen = 0
        self.published = 0
        self._tokens = 0.0
        self._bucket_t = 0.0
        self._wake = asyncio.Event()
        self._rebirth = False
        self._more = False
        self._feed_wait = False  # committed rows are expected on the feed: poll again soon
        self._feed_miss: dict[str, float] = {}  # ch -> since when the feed lacks committed rows
        self._publish: Publish | None = None
        self._saving: asyncio.Task | None = None
        self.writer = OutboxWriter(source.path)
        self._last_ack = self._last_send = 0.0
        self._free_ev = asyncio.Event()
        self._load_channels()
        for (ch, stream), seq in source.outbox().items():
            if ch in self.channels and stream in STREAMS:
                self.channels[ch].marks[stream].through = seq
                self._saved[(ch, stream)] = seq

    # ---- channel bookkeeping -------------------------------------------------------------
    def _load_channels(self) -> bool:
        if self.source.channel_count() == len(self.channels):
            return False
        for ch, run, descriptor in self.source.channels():
            if ch not in self.channels:
                self.channels[ch] = ChannelOut(ch, run, descriptor)
                self.by_topic_id[topic_id(ch)] = ch
        return True

    def run_id(self) -> str | None:
        runs = {c.run for c in self.channels.values()}
        return runs.pop() if len(runs) == 1 else self.source.meta().get("run_id")

    def request_replay(self, ch: str, stream: str, lo: int, hi: int) -> None:
        out = self.channels[ch]
        if len(out.requests) >= self.opt.max_replay_requests:
            raise OverflowError(f"{self.opt.max_replay_requests} replay requests are already pending for {ch}")
        out.requests.append((stream, lo, hi))
        self._wake.set()

    def rebirth(self) -> None:
        self._rebirth = True
        self._wake.set()

    # ---- one connection ------------------------------------------------------------------
    async def serve(self, publish: Publish, addr: BrokerAddress, sess: int, stop: asyncio.Event) -> None:
        """Publish until `stop` is set (then drain and return) or a publish fails (then raise)."""
        self.sess = sess
        self._publish = publish
        self._tokens = self.opt.replay_rate
        self._load_channels()
        await self._announce()
        for out in self.channels.values():
            self._plan_backlog(out)
        last_version, last_full, last_rows = -1, 0.0, 0.0
        last_save = time.monotonic()
        self._last_ack = time.monotonic()
        while not stop.is_set():
            version = self.source.data_version()
            now = time.monotonic()
            if self._inflight and now - max(self._last_ack, self._last_send) > self.opt.ack_timeout:
                raise MqttError(f"no acknowledgement from the broker for {self.opt.ack_timeout:g} s")
            if version != last_version or self._more or self._feed_wait or now - last_full > 1.0:
                last_version, last_full = version, now
                if self._load_channels():
                    await self._announce(only_new=True)
                rows_due = now - last_rows >= self.opt.rows_interval
                before = self.published
                await self._pump_live(all_streams=rows_due, wait_feed=True)
                if rows_due:
                    last_rows = now
                took = time.monotonic() - now
                if took > 0.1:
                    log.debug("mqtt: publishing %d messages took %.0f ms", self.published - before, took * 1e3)
            await self._pump_backlog(now)
            await self._pump_states(now)
            if now - last_save >= self.opt.outbox_interval:
                self._save_outbox_soon()
                last_save = now
            if self._rebirth:
                self._rebirth = False
                await self._announce(force=True)
            self._wake.clear()
            if self._more:  # a read hit its limit: more is committed, go on at once (behind: catch up)
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.opt.poll_interval)
            except TimeoutError:
                pass
        await self.drain()

    async def drain(self) -> None:
        """Publish everything committed, wait for the acks, store the outbox (bounded in time)."""
        try:
            async with asyncio.timeout(self.opt.drain_timeout):
                while True:
                    before = self.published
                    await self._pump_live()
                    await self._pump_backlog(time.monotonic(), unthrottled=True)
                    await self._pump_states(time.monotonic(), force=True)
                    if self.published == before:
                        break
                await self._wait_idle()
        except TimeoutError:
            log.warning("mqtt: stopped before every committed row was acknowledged; the journal keeps them")
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)
        self.save_outbox()

    def _changed_marks(self) -> dict[tuple[str, str], int]:
        return {(ch, stream): wm.through for ch, out in self.channels.items() for stream, wm in out.marks.items()
                if wm.through >= 0 and self._saved.get((ch, stream), -1) != wm.through}

    def save_outbox(self) -> None:
        """Store the acknowledged watermarks now (blocking; used at the end)."""
        marks = self._changed_marks()
        try:
            self.writer.save(marks)
            self._saved.update(marks)
        except sqlite3.Error as exc:
            log.warning("mqtt: could not store the outbox (%s); unacknowledged rows will be resent", exc)

    def _save_outbox_soon(self) -> None:
        """Store the watermarks in a worker thread (never blocks the loop; skipped while one runs)."""
        if self._saving is not None and not self._saving.done():
            return
        marks = self._changed_marks()
        if not marks:
            return

        async def save() -> None:
            try:
                await asyncio.to_thread(self.writer.save, marks)
                self._saved.update(marks)
            except sqlite3.Error as exc:  # the engine held the lock for long: try again later
                log.debug("mqtt: outbox not stored this time: %s", exc)

        self._saving = asyncio.get_running_loop().create_task(save())

    # ---- announcements -------------------------------------------------------------------
    def birth_payload(self) -> dict:
        return {"v": payloads.VERSION, "node": self.topics.node, "sess": self.sess, "ts": time.time(),
                "sw": __version__, "run": self.run_id(),
                "channels": [{"ch": c.ch, "topic": self.topics.ch(c.ch), "run": c.run}
                             for c in self.channels.values()],
                "encodings": ["json"],
                "schemas": {k: payloads.VERSION for k in
                            ("status", "birth", "desc", "state", "data", "event", "metric", "command", "reply")}}

    def status_payload(self, state: str) -> dict:
        return {"v": payloads.VERSION, "state": state, "sess": self.sess, "ts": time.time(), "sw": __version__}

    async def _announce(self, only_new: bool = False, force: bool = False) -> None:
        if not only_new:
            await self._send(self.topics.status, self.status_payload("online"), retain=True)
        await self._send(self.topics.birth, self.birth_payload(), retain=True)
        for out in self.channels.values():
            if only_new and out.desc_sent:
                continue
            body = payloads.descriptor_payload(out.run, out.ch, self.topics.node, out.descriptor,
                                               self.columns, time.time())
            await self._send(self.topics.desc(out.ch), body, retain=True)
            out.desc_sent = True
            out.state_due = True
            if force:
                out.state_sent = 0.0

    # ---- live, backlog, state ------------------------------------------------------------
    def _plan_backlog(self, out: ChannelOut) -> None:
        """After (re)connecting: everything committed and not acknowledged is backlog."""
        out.backlog.clear()
        for stream in STREAMS:
            head = self.source.head(stream, out.ch)
            missing = out.marks[stream].missing(head)
            if stream == "samples":
                out.backlog.extend(("samples", a, b) for a, b in missing)
                out.live_next[stream] = head + 1
                if head >= 0 and out.last_sample is None:
                    out.last_sample = self.source.samples(out.ch, head, head)[0]
                    out.state_due = True
            else:  # low volume: resend in order on the stream's own topic
                out.live_next[stream] = missing[0][0] if missing else head + 1

    def _feed_late(self, out: ChannelOut) -> bool:
        """True while committed rows the feed does not hold yet may still arrive on it (for at most
        feed_grace s); then they are read from the journal."""
        if self.feed is None or not self.feed.pushed:
            return False
        if self.source.head("samples", out.ch) < out.live_next["samples"]:
            self._feed_miss.pop(out.ch, None)  # nothing new committed
            return True
        now = time.monotonic()
        since = self._feed_miss.setdefault(out.ch, now)
        if now - since < self.opt.feed_grace:
            self._feed_wait = True
            return True
        return False

    async def _pump_live(self, all_streams: bool = True, wait_feed: bool = False) -> None:
        self._more = False  # set when a read hit read_limit: more is waiting, poll again at once
        self._feed_wait = False
        for out in list(self.channels.values()):
            block = None
            if self.feed is not None:
                block = self.feed.take(out.ch, out.live_next["samples"], self.opt.feed_limit)
            if block is not None:
                self._feed_miss.pop(out.ch, None)
                self._more = self._more or len(block) == self.opt.feed_limit
                out.live_next["samples"] = int(block[-1, 0]) + 1
                out.last_sample = payloads.array_row(self.columns, block[-1], out.ch)
                out.state_due = True
                await self._send_array(out, block)
            elif wait_feed and self._feed_late(out):
                pass
            else:
                rows = self.source.samples(out.ch, out.live_next["samples"], limit=self.opt.read_limit)
                self._more = self._more or len(rows) == self.opt.read_limit
                if rows:
                    await self._send_samples(out, rows, replay=False)
                    out.live_next["samples"] = rows[-1][1] + 1
                    out.last_sample = rows[-1]
                    out.state_due = True
            for stream in ("events", "metrics") if all_streams else ():
                rows = self.source.rows(stream, out.ch, out.live_next[stream], limit=self.opt.read_limit)
                self._more = self._more or len(rows) == self.opt.read_limit
                for row in rows:
                    await self._send_row(out, stream, row, replay=False)
                if rows:
                    out.live_next[stream] = rows[-1]["seq"] + 1
                    out.state_due = out.state_due or stream == "events"

    async def _pump_backlog(self, now: float, unthrottled: bool = False) -> None:
        """Resend backlog and replay requests at ≤ replay_rate messages/s (token bucket)."""
        last = self._bucket_t or now
        self._bucket_t = now
        self._tokens = min(self.opt.replay_rate, self._tokens + (now - last) * self.opt.replay_rate)
        if unthrottled:
            self._tokens = math.inf
        for out in list(self.channels.values()):
            for queue, replay in ((out.backlog, True), (out.requests, True)):
                while queue and self._tokens >= 1:
                    stream, lo, hi = queue[0]
                    if stream == "samples":
                        rows = self.source.samples(out.ch, lo, hi, limit=self.opt.max_batch)
                        nxt = rows[-1][1] + 1 if rows else hi + 1
                        if rows:
                            self._tokens -= await self._send_samples(out, rows, replay=replay)
                    else:
                        rows = self.source.rows(stream, out.ch, lo, hi, limit=self.opt.max_batch)
                        nxt = rows[-1]["seq"] + 1 if rows else hi + 1
                        for row in rows:
                            await self._send_row(out, stream, row, replay=replay)
                        self._tokens -= max(1, len(rows) // 10)
                    if nxt > hi:
                        queue.popleft()
                    else:
                        queue[0] = (stream, nxt, hi)

    async def _pump_states(self, now: float, force: bool = False) -> None:
        due = [o for o in self.channels.values()
               if o.state_due and (force or now - o.state_sent >= self.opt.state_interval)]
        if not due:
            return
        states = self.source.engine_states()
        for out in due:
            body = payloads.state_payload(out.run, out.ch, states.get(out.ch, "unknown"), self.columns,
                                          out.last_sample, time.time())
            await self._send(self.topics.state(out.ch), body, retain=True)
            out.state_due, out.state_sent = False, now

    async def _send_samples(self, out: ChannelOut, rows: list[tuple], replay: bool) -> int:
        topic = self.topics.replay(out.ch) if replay else self.topics.data(out.ch)
        count = 0
        for lo, hi, body in payloads.encode_batches(out.run, out.ch, self.sess, self.columns, rows,
                                                    replay=replay, max_samples=self.opt.max_batch):
            await self._send(topic, body, ack=(out.marks["samples"], lo, hi))
            count += 1
        return count

    async def _send_array(self, out: ChannelOut, block) -> None:
        topic = self.topics.data(out.ch)
        for lo, hi, body in payloads.encode_array_batches(out.run, out.ch, self.sess, self.columns, block,
                                                          max_samples=self.opt.max_batch):
            await self._send(topic, body, ack=(out.marks["samples"], lo, hi))

    async def _send_row(self, out: ChannelOut, stream: str, row: dict, replay: bool) -> None:
        wm = out.marks[stream]
        if stream == "events":
            await self._send(self.topics.event(out.ch), payloads.event_payload(out.run, out.ch, row, replay),
                             ack=(wm, row["seq"], row["seq"]))
            return
        body = payloads.dumps(payloads.metric_payload(out.run, out.ch, row, replay))
        await self._send(self.topics.metric(out.ch, row["kind"]), body, ack=(wm, row["seq"], row["seq"]))
        if not replay:  # a replayed old row must not become the retained "latest"
            await self._send(self.topics.metric_latest(out.ch, row["kind"]), body, retain=True)

    # ---- bounded concurrent QoS 1 publishing ---------------------------------------------
    async def _send(self, topic: str, body: dict | bytes, retain: bool = False,
                    ack: tuple[Watermark, int, int] | None = None) -> None:
        if not isinstance(body, bytes | bytearray):
            body = payloads.dumps(body)
        while self._inflight >= self.opt.max_inflight:
            await self._slot_freed()
        if not self._inflight:
            self._last_send = time.monotonic()
        self._inflight += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self._inflight)
        self.published += 1
        try:
            # no per-message timeout, task or future: the watchdog in `serve` notices a connection
            # that stopped acknowledging
            self._publish(topic, body, retain, lambda: self._acked(ack))
        except Exception:  # the connection is gone: unacked rows stay in the journal
            self._inflight -= 1
            self.published -= 1
            raise

    def _acked(self, ack: tuple[Watermark, int, int] | None) -> None:
        self._last_ack = time.monotonic()
        if ack is not None:
            ack[0].ack(ack[1], ack[2])
        self._inflight -= 1
        self._free_ev.set()

    async def _slot_freed(self) -> None:
        self._free_ev.clear()
        await self._free_ev.wait()

    async def _wait_idle(self) -> None:
        while self._inflight:
            await self._slot_freed()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def abandon(self) -> None:
        """Forget in-flight publishes of a dead connection (they stay in the journal)."""
        forget = getattr(self._publish, "forget", None)
        if forget is not None:
            forget()
        self._inflight = 0
        self._free_ev.set()
