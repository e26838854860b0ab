"""The MQTT service in a process of its own, beside the engine.

At max speed the engine keeps one core busy; publishing (reading the committed journal, JSON, the
client library's work per message) then runs on another core instead of taking turns with the
engine. The child reads only what is committed, as the in-process publisher does (journal first,
publish second), and hands operator commands back to the engine's RunControl over its standard input
and output, one JSON object per line:

    parent -> child   {"op": "stop"}   {"op": "reply", "id": N, "ok": true, "message": "..."}
    child -> parent   {"op": "status", ...}   {"op": "command", "id": N, "verb": "pause", "ch": ...,
                      "actor": ..., "source": ..., "request_id": ...}   {"op": "done", ...}

With the journal writer's feeds given (the engine does), the sample rows of every commit also go to
the child once their COMMIT returned, over a pipe of their own ({"ch": ..., "n": N, "cols": K,
"bytes": B} and B bytes of little-endian float64, columns schema.SAMPLE_COLUMNS), so the child
publishes live samples without reading them back from the journal. A block the pipe cannot take
(the child is behind) is not sent, and the child reads those rows from the journal, as it does
without a feed.

The child stops (publishing what is committed first) on "stop" or when its standard input closes,
so it never outlives the engine for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..store.journal import CommittedFeed
from .service import MqttStatus, run_mqtt

log = logging.getLogger("cyclerctl.mqtt")

STATUS_FIELDS = ("connected", "sess", "connects", "last_error", "published", "max_inflight_seen", "echo", "fed")
VERBS = ("pause", "resume", "skip", "stop", "abort")


class _PipeFeed:
    """A journal feed (Journal.feeds) that writes committed rows to a pipe the child reads. push()
    comes from the journal writer's thread and only queues the rows (never blocks: a block that does
    not fit in the queue is not sent, the child reads it from the journal); a thread of its own
    writes them, since the engine's event loop may not get to it for long at max speed."""

    def __init__(self, fd: int, max_blocks: int = 4) -> None:
        self._fd = fd
        self._queue: queue.Queue = queue.Queue(max_blocks)
        self.sent = self.skipped = 0  # rows
        self._dead = False
        self._thread = threading.Thread(target=self._write, name="mqtt-feed", daemon=True)
        self._thread.start()

    def push(self, ch: str, rows: np.ndarray) -> None:
        if self._dead:
            return
        try:
            self._queue.put_nowait((ch, rows))
        except queue.Full:
            self.skipped += len(rows)

    def _write(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                ch, rows = item
                data = memoryview(np.ascontiguousarray(rows, dtype="<f8")).cast("B")  # no copy
                head = {"ch": ch, "n": int(rows.shape[0]), "cols": int(rows.shape[1]), "bytes": len(data)}
                for view in (memoryview((json.dumps(head) + "\n").encode()), data):
                    while view:
                        view = view[os.write(self._fd, view):]
                self.sent += len(rows)
        except OSError:  # the child is gone: the journal has everything
            self._dead = True
        finally:
            os.close(self._fd)

    def close(self) -> None:
        self._dead = True
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:  # drop what is still queued: the child reads it from the journal
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout=5)


FEED_WAIT = 5.0  # s the pipe reader waits for room in the publisher's feed
PIPE_SIZE = 1 << 20  # bytes of the feed pipe (the default maximum for an unprivileged process)


def _read_feed(fd: int, feed: CommittedFeed) -> None:
    """Child side: committed rows from the engine's pipe into the publisher's feed (a thread)."""
    with os.fdopen(fd, "rb") as f:
        while line := f.readline():
            head = json.loads(line)
            data = f.read(int(head["bytes"]))
            if len(data) < int(head["bytes"]):
                return
            # wait for the publisher to take what the feed holds (the pipe and the engine's bounded
            # queue hold the next commits meanwhile); a publisher stuck for FEED_WAIT s (no broker)
            # reads the dropped rows from the journal later
            feed.push(head["ch"], np.frombuffer(data, dtype="<f8").reshape(int(head["n"]), int(head["cols"])),
                      wait=FEED_WAIT)


def _update(status: MqttStatus, msg: dict) -> None:
    for k in STATUS_FIELDS:
        if k in msg:
            setattr(status, k, msg[k])
    if msg.get("history"):
        status.history = list(msg["history"])


async def run_mqtt_process(journal_path: str | Path, url: str, node: str, control, stop: asyncio.Event, *,
                           status: MqttStatus | None = None, commands: str = "auth",
                           drain_timeout: float = 120.0, feeds: list | None = None) -> MqttStatus:
    """run_mqtt in a child process; same arguments and result. Commands from the broker are carried
    out here, on `control` (the engine's RunControl). feeds: the journal writer's Journal.feeds; the
    committed rows are then handed to the child over its standard input."""
    status = status or MqttStatus()
    cfg = {"journal": str(journal_path), "url": url, "node": node, "commands": commands}
    feed_r = feed_w = None
    if feeds is not None:
        feed_r, feed_w = os.pipe()
        cfg["feed_fd"] = feed_r
        with contextlib.suppress(AttributeError, OSError):  # Linux: 1 MB instead of 64 kB per pipe
            fcntl.fcntl(feed_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # (a commit's rows in 25 writes, not 400)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the child imports this very package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cyclerctl.mqtt.process", json.dumps(cfg),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            pass_fds=() if feed_r is None else (feed_r,))
    except BaseException:
        for fd in (feed_r, feed_w):
            if fd is not None:
                os.close(fd)
        raise
    pipe = None
    if feed_r is not None:
        os.close(feed_r)
        pipe = _PipeFeed(feed_w)
        feeds.append(pipe)
    answers: set[asyncio.Task] = set()

    def send(msg: dict) -> None:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write((json.dumps(msg) + "\n").encode())

    async def answer(msg: dict) -> None:
        verb = msg.get("verb")
        try:
            if control is None or verb not in VERBS:
                ok, message = False, "this node has no run to control"
            else:
                ok, message = await getattr(control, verb)(msg.get("ch"), actor=msg.get("actor"),
                                                           source=msg.get("source"),
                                                           request_id=msg.get("request_id"))
        except Exception as exc:  # noqa: BLE001 - the reply says what went wrong
            log.exception("mqtt: command failed")
            ok, message = False, f"internal error: {exc}"
        send({"op": "reply", "id": msg.get("id"), "ok": bool(ok), "message": str(message)})

    async def pump() -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            op = msg.get("op")
            if op in ("status", "done"):
                _update(status, msg)
            elif op == "command":
                task = asyncio.get_running_loop().create_task(answer(msg))
                answers.add(task)
                task.add_done_callback(answers.discard)

    reader = asyncio.get_running_loop().create_task(pump())
    stopped = asyncio.get_running_loop().create_task(stop.wait())
    try:
        await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not stop.is_set():
            status.last_error = f"the MQTT process ended early (exit status {await proc.wait()})"
            log.warning("mqtt: %s; the journal keeps everything", status.last_error)
        send({"op": "stop"})
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), drain_timeout)
        except TimeoutError:
            log.warning("mqtt: the MQTT process did not stop within %g s; ended it", drain_timeout)
            proc.kill()
            await proc.wait()
        await reader
    finally:
        if pipe is not None:
            feeds.remove(pipe)
        stopped.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if pipe is not None:
            pipe.close()  # the child is gone: a write still blocked fails at once
        for task in list(answers):
            task.cancel()
    status.connected = False
    return status


class _ControlProxy:
    """RunControl's operator actions, carried out by the engine's process (child side)."""

    def __init__(self, send) -> None:
        self._send = send
        self._waiting: dict[int, asyncio.Future] = {}
        self._next = 0

    async def _call(self, verb: str, ch: str | None, actor: str | None = None, source: str | None = None,
                    request_id: str | None = None) -> tuple[bool, str]:
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        self._send({"op": "command", "id": self._next, "verb": verb, "ch": ch, "actor": actor, "source": source,
                    "request_id": request_id})
        return await fut

    def reply(self, msg: dict) -> None:
        fut = self._waiting.pop(msg.get("id"), None)
        if fut is not None and not fut.done():
            fut.set_result((bool(msg.get("ok")), str(msg.get("message"))))

    def close(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result((False, "the run has ended"))
        self._waiting.clear()

    async def pause(self, ch, **kw) -> tuple[bool, str]:
        return await self._call("pause", ch, **kw)

    async def resume(self, ch, **kw) -> tuple[bool, str]:
        return await self._call("resume", ch, **kw)

    async def skip(self, ch, **kw) -> tuple[bool, str]:
        return await self._call("skip", ch, **kw)

    async def stop(self, ch, **kw) -> tuple[bool, str]:
        return await self._call("stop", ch, **kw)

    async def abort(self, ch, **kw) -> tuple[bool, str]:
        return await self._call("abort", ch, **kw)


def _status_dict(status: MqttStatus) -> dict[str, Any]:
    d = dataclasses.asdict(status)
    d["history"] = d["history"][-20:]
    return d


async def _child(cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    status = MqttStatus()

    def send(msg: dict) -> None:
        sys.stdout.buffer.write((json.dumps(msg) + "\n").encode())
        sys.stdout.buffer.flush()

    proxy = _ControlProxy(send)
    feed = None
    if cfg.get("feed_fd") is not None:
        feed = CommittedFeed()
        threading.Thread(target=_read_feed, args=(cfg["feed_fd"], feed), name="feed", daemon=True).start()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)

    async def inbox() -> None:
        while True:
            line = await reader.readline()
            if not line:  # the engine's process is gone or closed the pipe: stop
                stop.set()
                return
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") == "stop":
                stop.set()
            elif msg.get("op") == "reply":
                proxy.reply(msg)

    async def report() -> None:
        while True:
            status.fed = feed.pushed if feed is not None else 0
            send({"op": "status", **_status_dict(status)})
            await asyncio.sleep(0.5)

    tasks = [loop.create_task(inbox()), loop.create_task(report())]
    try:
        await run_mqtt(cfg["journal"], cfg["url"], cfg["node"], proxy, stop, commands=cfg["commands"],
                       status=status, feed=feed)
    finally:
        proxy.close()
        for t in tasks:
            t.cancel()
        status.fed = feed.pushed if feed is not None else 0
        send({"op": "done", **_status_dict(status)})


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group: the engine stops the run and then this
    # process (which publishes what is committed first), so the interrupt itself is not for us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    asyncio.run(_child(json.loads(args[0])))


if __name__ == "__main__":
    main()
