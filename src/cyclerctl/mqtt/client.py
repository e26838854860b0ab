"""The one module that talks to aiomqtt (2.x). Everything else in cyclerctl.mqtt goes through here, so a
move to another client (aiomqtt 3, MQTT 5 only) stays local.

Broker URLs: ``mqtt://[user[:password]@]host[:port][?protocol=5|3.1.1]``, ``mqtts://…`` for TLS
(``?ca=FILE&cert=FILE&key=FILE``), ``ws://host:port/path`` and ``wss://…`` for MQTT over websockets. Protocol 5 is the default; ``3.1.1`` is for brokers that speak only
that (the embedded demo broker). Every payload is self-describing, so nothing depends on MQTT 5.

aiomqtt 2.x cannot reconnect a Client object reliably: callers create a fresh client per attempt with
`new_client` and enter it once.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import ConfigError

MqttError = aiomqtt.MqttError
MqttCodeError = aiomqtt.MqttCodeError
Message = aiomqtt.Message

_PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311,
              "311": aiomqtt.ProtocolVersion.V311}


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and how to log in."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    protocol: str = "5"
    websockets: bool = False
    path: str = "/mqtt"

    @property
    def v5(self) -> bool:
        return self.protocol == "5"

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def authenticated(self) -> bool:
        """True when we log in with a user name (the broker then knows who we are)."""
        return bool(self.username)

    def url(self, with_password: bool = False) -> str:
        """The URL again; the password is masked unless asked for."""
        user = ""
        if self.username:
            secret = (self.password or "") if with_password else "***"
            user = f"{self.username}:{secret}@" if self.password else f"{self.username}@"
        query = "" if self.v5 else f"?protocol={self.protocol}"
        scheme = ("wss" if self.tls else "ws") if self.websockets else ("mqtts" if self.tls else "mqtt")
        path = self.path if self.websockets else ""
        return f"{scheme}://{user}{self.host}:{self.port}{path}{query}"


def parse_url(url: str) -> BrokerAddress:
    """Parse a broker URL; a wrong one is a ConfigError that says what a right one looks like."""
    hint = "expected mqtt://[user:password@]host[:port], mqtts://... (TLS) or ws(s)://host:port/path"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"bad broker URL {url!r}: {exc}; {hint}") from None
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "tls", "ws", "wss"):
        raise ConfigError(f"bad broker URL {url!r}: unknown scheme {parts.scheme!r}; {hint}")
    if not parts.hostname:
        raise ConfigError(f"bad broker URL {url!r}: no host; {hint}")
    tls = parts.scheme in ("mqtts", "tls", "wss")
    ws = parts.scheme in ("ws", "wss")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"protocol", "ca", "cert", "key"}
    if unknown:
        raise ConfigError(f"bad broker URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                          "known: protocol, ca, cert, key")
    protocol = query.get("protocol", "5")
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"bad broker URL {url!r}: protocol must be 5 or 3.1.1, not {protocol!r}")
    if protocol == "311":
        protocol = "3.1.1"
    if (query.get("ca") or query.get("cert")) and not tls:
        raise ConfigError(f"bad broker URL {url!r}: ca/cert need the mqtts:// or wss:// scheme")
    default_port = {(False, False): 1883, (True, False): 8883, (False, True): 80, (True, True): 443}[(tls, ws)]
    return BrokerAddress(
        websockets=ws, path=(parts.path or "/mqtt") if ws else "/mqtt",
        host=parts.hostname, port=port or default_port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls, ca=query.get("ca"), cert=query.get("cert"), key=query.get("key"), protocol=protocol)


def _tls_context(addr: BrokerAddress) -> ssl.SSLContext | None:
    if not addr.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=addr.ca)
        if addr.cert:
            ctx.load_cert_chain(addr.cert, addr.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files for {addr.url()}: {exc}") from None
    return ctx


def publish_properties(addr: BrokerAddress, *, expiry_s: int | None = None,
                       response_topic: str | None = None, correlation: bytes | None = None,
                       content_type: str | None = "application/json") -> Properties | None:
    """MQTT 5 PUBLISH properties (None on 3.1.1, where the payload says the same in-band)."""
    if not addr.v5:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if content_type:
        props.ContentType = content_type
    if expiry_s is not None:
        props.MessageExpiryInterval = int(expiry_s)
    if response_topic:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


def response_of(message: Message) -> tuple[str | None, bytes | None]:
    """(response topic, correlation data) of a received MQTT 5 message, or (None, None)."""
    props = message.properties
    if props is None:
        return None, None
    return getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)


def new_client(addr: BrokerAddress, *, identifier: str | None = None,
               will: tuple[str, bytes, int, bool] | None = None, persistent: bool = False,
               session_expiry_s: int = 3600, timeout: float = 10.0, keepalive: int = 60,
               max_inflight: int = 64, max_queued_incoming: int | None = None) -> aiomqtt.Client:
    """A fresh aiomqtt Client (create one per connection attempt, inside the running loop).

    persistent: keep the broker session (MQTT 5 clean_start=False with a finite session expiry;
    clean_session=False on 3.1.1) so QoS 1 messages are queued by the broker while we are away."""
    kwargs: dict = {}
    if addr.v5:
        kwargs["clean_start"] = False if persistent else True
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(session_expiry_s)
            kwargs["properties"] = props
    else:
        kwargs["clean_session"] = not persistent
    client = aiomqtt.Client(
        addr.host, addr.port, username=addr.username, password=addr.password,
        identifier=identifier or f"cyclerctl-{uuid.uuid4().hex[:12]}",
        protocol=_PROTOCOLS[addr.protocol],
        will=aiomqtt.Will(*will) if will else None,
        timeout=timeout, keepalive=keepalive, tls_context=_tls_context(addr),
        max_inflight_messages=max_inflight, max_queued_incoming_messages=max_queued_incoming,
        transport="websockets" if addr.websockets else "tcp",
        websocket_path=addr.path if addr.websockets else None,
        **kwargs)
    client.pending_calls_threshold = max_inflight + 1  # we bound concurrency ourselves
    return client


class AckedPublish:
    """QoS 1 publishing on an entered client without a coroutine, an event and a task per message:
    `publish(topic, payload, retain, on_ack)` hands the message to the client library at once and
    calls `on_ack()` when the broker's PUBACK arrives. Raises MqttCodeError when the client cannot
    take the message (disconnected). Publishes made through the client's own `publish` coroutine
    are acknowledged as before. `forget()` drops the callbacks of a dead connection."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client
        self._theirs = client._pending_publishes  # the coroutine publishes of aiomqtt itself
        self._acks: dict[int, Callable[[], None]] = {}
        self._early: set[int] = set()  # acknowledged before publish() returned
        self._chained = self._paho.on_publish
        self._paho.on_publish = self._on_publish

    def _on_publish(self, client, userdata, mid: int, *rest) -> None:
        cb = self._acks.pop(mid, None)
        if cb is not None:
            cb()
        elif mid in self._theirs:
            self._chained(client, userdata, mid, *rest)
        else:
            self._early.add(mid)

    def __call__(self, topic: str, payload: bytes, retain: bool, on_ack: Callable[[], None]) -> None:
        info = self._paho.publish(topic, payload, 1, retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, "Could not publish message")
        if info.mid in self._early:
            self._early.discard(info.mid)
            on_ack()
        else:
            self._acks[info.mid] = on_ack

    def forget(self) -> None:
        self._acks.clear()
        self._early.clear()
