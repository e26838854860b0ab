"""The MQTT service of a run: one task beside the engine.

``await run_mqtt(journal_path, url, node, control, stop)`` publishes the run journal and serves
commands until `stop` is set, then publishes what is committed, says ``offline`` and returns.
It never raises because the broker is away: it reconnects with a fresh client per attempt and a
bounded exponential backoff with jitter, and the journal holds everything meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..store.journal import CommittedFeed
from . import payloads
from .client import (
    AckedPublish,
    BrokerAddress,
    MqttError,
    new_client,
    parse_url,
    publish_properties,
    response_of,
)
from .control import CommandHandler, RunControl
from .outbox import JournalSource
from .publisher import Publisher, PublisherOptions
from .topics import ROOT, Topics

log = logging.getLogger("cyclerctl.mqtt")


@dataclass
class MqttStatus:
    """What the service is doing, for progress displays and tests."""

    connected: bool = False
    sess: int = 0
    connects: int = 0
    last_error: str | None = None
    published: int = 0
    max_inflight_seen: int = 0
    echo: bool = False  # our own status came back through the broker (it accepts what we publish)
    fed: int = 0  # commits whose sample rows the engine handed over (MQTT process with a feed)
    history: list[str] = field(default_factory=list)


def _next_session(previous: int) -> int:
    """Session number: Unix milliseconds of the connect, strictly increasing."""
    return max(int(time.time() * 1000), previous + 1)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def _wait_for_journal(path: Path, stop: asyncio.Event) -> JournalSource | None:
    while not stop.is_set():
        if path.exists():
            try:
                return JournalSource(path)
            except Exception as exc:  # tables not created yet
                log.debug("mqtt: journal not ready: %s", exc)
        await _sleep_or_stop(stop, 0.2)
    return None


async def run_mqtt(journal_path: str | Path, url: str | BrokerAddress, node: str, control: RunControl | None,
                   stop: asyncio.Event, *, root: str = ROOT, commands: str = "auth",
                   options: PublisherOptions | None = None, status: MqttStatus | None = None,
                   backoff: tuple[float, float] = (0.5, 10.0), client_id: str | None = None,
                   feed: CommittedFeed | None = None, **tuning) -> MqttStatus:
    """Publish `journal_path` to the broker at `url` as node `node` and serve commands via `control`.

    commands: "auth" (default) refuses commands unless our own broker connection is authenticated;
    "open" also accepts them on an anonymous connection, but only to a broker on loopback (the demo's
    embedded broker); "off" does not subscribe to commands at all.
    feed: the journal writer's CommittedFeed when the engine runs in this process (live samples are
    then published from the committed rows it hands over instead of being read back from the disk).
    tuning: PublisherOptions fields (poll_interval, max_inflight, replay_rate, ...)."""
    addr = parse_url(url) if isinstance(url, str) else url
    topics = Topics(node, root)
    if commands not in ("auth", "open", "off"):
        from ..errors import ConfigError

        raise ConfigError(f"commands must be auth, open or off, not {commands!r}")
    opt = options or PublisherOptions(**tuning)
    status = status or MqttStatus()
    source = await _wait_for_journal(Path(journal_path), stop)
    if source is None:
        return status
    publisher = Publisher(source, topics, opt, feed=feed)
    open_commands = commands == "open" and addr.loopback  # "open" never applies to a lab broker
    if commands == "open" and not addr.loopback:
        log.info("mqtt: commands need an authenticated connection to %s (open applies on loopback only)", addr.host)
    handler = CommandHandler(topics, control, publisher, authenticated=addr.authenticated,
                             open_commands=open_commands)
    client_id = client_id or f"cyclerctl-{node}-{uuid.uuid4().hex[:8]}"
    delay = backoff[0]
    final_attempt = False
    try:
        while True:
            if stop.is_set():  # asked to stop while not connected: one last try to publish what is committed
                if final_attempt:
                    break
                final_attempt = True
            sess = _next_session(status.sess)
            will = (topics.status, payloads.dumps({"v": payloads.VERSION, "state": "lost", "sess": sess}), 1, True)
            client = new_client(addr, identifier=client_id, will=will, max_inflight=opt.max_inflight,
                                max_queued_incoming=1000)
            try:
                async with client:
                    status.connected, status.sess, status.echo = True, sess, False
                    status.connects += 1
                    status.history.append("connected")
                    delay = backoff[0]
                    log.info("mqtt: connected to %s as %s (session %d)", addr.url(), node, sess)
                    await _serve(client, addr, topics, publisher, handler, stop, commands, status)
                    await client.publish(topics.status, payloads.dumps(publisher.status_payload("offline")),
                                         qos=1, retain=True, properties=publish_properties(addr))
                break  # stopped, and everything committed was published
            except* (MqttError, OSError) as group:
                exc = group.exceptions[0]
                status.last_error = str(exc)
                if status.connected:
                    log.warning("mqtt: connection to %s lost: %s; the journal keeps everything", addr.url(), exc)
                    status.history.append("lost")
                else:
                    log.warning("mqtt: cannot connect to %s: %s; retrying in %.1f s", addr.url(), exc, delay)
            except* Exception as group:  # a fault of ours must not end publishing for the rest of the run
                status.last_error = repr(group.exceptions[0])
                status.history.append("error")
                log.error("mqtt: publishing failed, starting over: %r", group.exceptions[0],
                          exc_info=group.exceptions[0])
            finally:
                status.connected = False
                await publisher.abandon()
                status.published = publisher.published
                status.max_inflight_seen = publisher.max_inflight_seen
            if stop.is_set():
                continue
            await _sleep_or_stop(stop, delay * random.uniform(0.8, 1.2))
            delay = min(backoff[1], delay * 2)
    finally:
        try:
            publisher.save_outbox()
        finally:
            publisher.writer.close()
            source.close()
    return status


async def _serve(client, addr: BrokerAddress, topics: Topics, publisher: Publisher, handler: CommandHandler,
                 stop: asyncio.Event, commands: str, status: MqttStatus) -> None:
    await client.subscribe(topics.status, qos=1)  # to see our own "online" come back (ACL check)
    if commands != "off":
        for flt in topics.command_filters:
            await client.subscribe(flt, qos=1)
    async with asyncio.TaskGroup() as tg:
        inbox = tg.create_task(_inbox(client, addr, topics, handler, status))
        watch = tg.create_task(_check_echo(addr, topics, status))
        await publisher.serve(AckedPublish(client), addr, status.sess, stop)
        inbox.cancel()
        watch.cancel()


async def _check_echo(addr: BrokerAddress, topics: Topics, status: MqttStatus, within: float = 10.0) -> None:
    """A broker that refuses our publishes (ACL) still acknowledges them under MQTT 3.1.1, and aiomqtt
    does not report MQTT 5 refusals: so check that our own status comes back, and say so if not."""
    await asyncio.sleep(within)
    if not status.echo:
        log.error("mqtt: %s does not deliver what this node publishes under %s/ — check the broker's ACL "
                  "(a node may write only cycler/v1/<its user name>/#; use --node equal to the MQTT user)",
                  addr.url(), topics.base)


async def _inbox(client, addr: BrokerAddress, topics: Topics, handler: CommandHandler, status: MqttStatus) -> None:
    async for message in client.messages:
        topic = str(message.topic)
        if topic == topics.status:
            try:
                status.echo = status.echo or payloads.loads(message.payload).get("sess") == status.sess
            except (ValueError, AttributeError):
                pass
            continue
        response_topic, correlation = response_of(message)
        reply_topic, reply = await handler.handle(topic, bytes(message.payload or b""), response_topic, correlation)
        props = publish_properties(addr, correlation=correlation)
        await client.publish(reply_topic, payloads.dumps(reply), qos=1, properties=props)
