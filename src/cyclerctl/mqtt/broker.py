"""An embedded MQTT broker for the demo when no broker is configured: amqtt on loopback.

amqtt speaks MQTT 3.1.1 only, so `url` asks clients for 3.1.1; every cyclerctl payload is
self-describing and works the same. It accepts anonymous clients on 127.0.0.1 and nothing else:
a convenience for one machine, not a lab broker (use mosquitto, see docs/deployment.md).

    async with EmbeddedBroker() as broker:
        await run_mqtt(journal, broker.url, "demo", control, stop, commands="open")
"""

from __future__ import annotations

import logging

from ..errors import BrokerError


class EmbeddedBroker:
    """amqtt broker on `host`:`port` (port 0 = a free one); `.url` once entered."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise BrokerError(f"the embedded broker listens on loopback only, not {host!r}; use mosquitto for a lab")
        self.host, self.port = host, port
        self._broker = None

    @property
    def url(self) -> str:
        if self._broker is None:
            raise BrokerError("the embedded broker is not running")
        return f"mqtt://{self.host}:{self.port}?protocol=3.1.1"

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:
            raise BrokerError(f"cannot start the embedded broker on {self.host}:{self.port}: {exc}") from None
        self._broker = broker
        server = broker._servers["default"].instance  # the asyncio server: learn the bound port
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
