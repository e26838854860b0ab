"""The journal's commit feed: live samples published from the rows the writer committed, not read back.

- Batches encoded from the committed array are byte for byte those encoded from the journal's rows
  (NULLs, integer columns, -0.0, step changes, batches over 200 samples, a column null in one batch).
- The feed hands over only committed rows, continues exactly at the asked seq, says "not here" for a
  seq it does not hold, and stays bounded when nobody reads it.
"""

from __future__ import annotations

import numpy as np

from cyclerctl.mqtt import payloads
from cyclerctl.mqtt.outbox import JournalSource
from cyclerctl.store import schema
from cyclerctl.store.journal import CommittedFeed, Journal

COL = {c: k for k, c in enumerate(schema.SAMPLE_COLUMNS)}


def sample_rows(first: int, n: int, step_len: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.full((n, len(schema.SAMPLE_COLUMNS)), np.nan)
    seq = np.arange(first, first + n)
    step = 1 + seq // step_len
    rows[:, COL["seq"]] = seq
    rows[:, COL["test_time_second"]] = 30.0 * seq + 0.125
    rows[:, COL["unix_time_second"]] = 1.8e9 + 30.0 * seq
    rows[:, COL["step_time_second"]] = 30.0 * (seq % step_len)
    rows[:, COL["voltage_volt"]] = np.round(rng.normal(0.5, 0.2, n) / 1e-5) * 1e-5
    current = np.where(step % 2, -1.7e-3, 1.7e-3)
    current[step % 3 == 0] = -0.0  # a rest step: the noise rounded to -0.0
    rows[:, COL["current_ampere"]] = current
    temp = rng.normal(25.0, 0.05, n)
    temp[(seq // 150) % 2 == 1] = np.nan  # missing in some batches, partly missing in others
    rows[:, COL["temperature_t1_celsius"]] = temp
    rows[:, COL["cycle_count"]] = 1 + step // 2
    rows[:, COL["step_count"]] = step
    rows[:, COL["step_id"]] = 1 + step % 2
    segment = np.where(seq % 7 == 0, np.nan, seq % 3)
    rows[:, COL["sweep_segment"]] = segment
    return rows


def fed_journal(tmp_path):
    """A journal of one channel, a1, with a CommittedFeed on it."""
    journal = Journal(tmp_path / "journal.sqlite")
    feed = CommittedFeed()
    journal.feeds.append(feed)
    journal.add_channel("a1", "run", {}, None, lambda *_: ("running", "{}", None))
    return journal, feed


def test_batches_from_the_committed_array_equal_those_from_the_journal(tmp_path):
    rng = np.random.default_rng(3)
    journal, feed = fed_journal(tmp_path)
    first = 0
    for n in (1, 457, 3, 1200):
        journal.stage_samples("a1", sample_rows(first, n, 230, rng))
        first += n
    journal.commit_sync()
    source = JournalSource(tmp_path / "journal.sqlite")
    try:
        rows = source.samples("a1", 0, limit=10_000)
        block = feed.take("a1", 0, 10_000)
        assert block is not None and len(block) == len(rows) == first
        from_journal = list(payloads.encode_batches("run", "a1", 5, source.sample_columns, rows))
        from_feed = list(payloads.encode_array_batches("run", "a1", 5, source.sample_columns, block))
        assert len(from_journal) > 10
        assert from_feed == from_journal
        assert payloads.array_row(source.sample_columns, block[-1], "a1") == rows[-1]
        assert payloads.array_row(source.sample_columns, block[7], "a1") == rows[7]
    finally:
        source.close()
        journal.close()


def test_the_feed_holds_only_committed_rows_and_continues_at_the_asked_seq(tmp_path):
    rng = np.random.default_rng(4)
    journal, feed = fed_journal(tmp_path)
    journal.stage_samples("a1", sample_rows(0, 100, 40, rng))
    assert feed.take("a1", 0, 1000) is None  # staged, not committed
    journal.commit_sync()
    journal.stage_samples("a1", sample_rows(100, 50, 40, rng))
    journal.commit_sync()
    part = feed.take("a1", 30, 80)  # the first 30 were published from the journal
    assert part[:, COL["seq"]].tolist() == list(range(30, 110))
    rest = feed.take("a1", 110, 1000)
    assert rest[:, COL["seq"]].tolist() == list(range(110, 150))
    assert feed.take("a1", 150, 1000) is None
    journal.close()


def test_a_reader_that_fell_behind_is_told_to_read_the_journal_and_the_feed_stays_bounded():
    rng = np.random.default_rng(5)
    feed = CommittedFeed(max_rows=1000)
    for k in range(30):
        feed.push("a1", sample_rows(100 * k, 100, 40, rng))
        feed.push("b2", sample_rows(100 * k, 100, 40, rng))
    held = sum(len(a) for q in feed._blocks.values() for a in q)
    assert held <= 1000
    assert feed.take("a1", 0, 1000) is None  # dropped: the publisher reads these from the journal
    newest = feed.take("b2", 2900, 1000)
    assert newest[:, COL["seq"]].tolist() == list(range(2900, 3000))


def test_a_pusher_that_may_wait_is_held_until_the_reader_takes_and_loses_nothing():
    """The thread reading the engine's pipe waits for room instead of dropping a commit's rows (at
    max speed one commit is about half the feed's bound): every row reaches the reader from the
    feed; without a reader it waits at most `wait` s, then drops the oldest as before."""
    import threading
    import time

    rng = np.random.default_rng(9)
    feed = CommittedFeed(max_rows=1000)
    blocks = [sample_rows(600 * k, 600, 40, rng) for k in range(10)]

    def pusher():
        for b in blocks:
            feed.push("a1", b, wait=5.0)

    th = threading.Thread(target=pusher)
    th.start()
    got, nxt, deadline = [], 0, time.monotonic() + 10
    while nxt < 6000 and time.monotonic() < deadline:
        part = feed.take("a1", nxt, 250)
        if part is None:
            time.sleep(0.001)
            continue
        got.append(part)
        nxt = int(part[-1, COL["seq"]]) + 1
    th.join(5)
    assert np.concatenate(got)[:, COL["seq"]].tolist() == list(range(6000))

    lonely = CommittedFeed(max_rows=1000)
    t0 = time.monotonic()
    for b in blocks[:3]:
        lonely.push("a1", b, wait=0.05)
    assert time.monotonic() - t0 < 2
    assert sum(len(a) for q in lonely._blocks.values() for a in q) <= 1000
    assert lonely.take("a1", 0, 100) is None  # the oldest was dropped after the wait
