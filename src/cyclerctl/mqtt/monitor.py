"""`cyclerctl monitor`: a live table of every channel on a broker.

The first view comes from retained topics (status, desc, state, metric/{kind}/latest), so a monitor
started mid-run shows every channel at once; the live stream (data, event, metric) keeps it current.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.table import Table

from . import payloads
from .client import MqttError, new_client, parse_url
from .topics import ROOT, split_channel_topic


@dataclass
class ChannelView:
    node: str
    ch: str
    state: str = "?"
    step_id: int | None = None
    step_count: int | None = None
    cycle_count: int | None = None
    voltage_volt: float | None = None
    current_ampere: float | None = None
    temperature_t1_celsius: float | None = None
    capacity_mah_g: float | None = None
    capacity_mah: float | None = None
    coulombic_efficiency: float | None = None
    diffusion_coefficient_cm2_s: float | None = None
    updated: float = 0.0


class MonitorModel:
    """Channel views built from received messages (pure: feed it (topic, payload))."""

    def __init__(self, root: str = ROOT) -> None:
        self.root = root
        self.nodes: dict[str, dict] = {}
        self.channels: dict[tuple[str, str], ChannelView] = {}

    def view(self, node: str, ch_tid: str, ch: str | None = None) -> ChannelView:
        key = (node, ch_tid)
        if key not in self.channels:
            self.channels[key] = ChannelView(node, ch or ch_tid)
        v = self.channels[key]
        if ch:
            v.ch = ch
        return v

    def feed(self, topic: str, payload: bytes) -> None:
        try:
            body = payloads.loads(payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if topic.startswith(self.root + "/") and topic.count("/") == self.root.count("/") + 2:
            node, leaf = topic[len(self.root) + 1:].split("/")
            if leaf == "status":
                prev = self.nodes.get(node)
                if prev and body.get("state") == "lost" and body.get("sess", 0) < prev.get("sess", 0):
                    return  # a stale will of an older session
                self.nodes[node] = body
            return
        parts = split_channel_topic(topic, self.root)
        if parts is None:
            return
        node, tid, rest = parts
        v = self.view(node, tid, body.get("ch"))
        v.updated = time.time()
        if rest == "state":
            for k in ("state", "step_id", "step_count", "cycle_count", "voltage_volt", "current_ampere",
                      "temperature_t1_celsius"):
                if body.get(k) is not None:
                    setattr(v, k, body[k])
        elif rest == "data":
            for k in ("step_id", "step_count", "cycle_count"):
                if body.get(k) is not None:
                    setattr(v, k, body[k])
            for k, col in (body.get("cols") or {}).items():
                if hasattr(v, k) and col and col[-1] is not None:
                    setattr(v, k, col[-1])
        elif rest == "event":
            kind = body.get("kind")
            state = {"pause": "paused", "resume": "running", "stop": "stopped", "abort": "aborted",
                     "fault": "faulted", "safety_trip": "faulted", "run_end": "done"}.get(kind)
            if state:
                v.state = state
        elif rest.startswith("metric/"):
            self._metric(v, body.get("data") or {})

    @staticmethod
    def _metric(v: ChannelView, data: dict) -> None:
        if data.get("specific_discharge_capacity_mah_g") is not None:
            v.capacity_mah_g = data["specific_discharge_capacity_mah_g"]
        if data.get("discharge_capacity_ah") is not None:
            v.capacity_mah = data["discharge_capacity_ah"] * 1e3
        if data.get("coulombic_efficiency") is not None:
            v.coulombic_efficiency = data["coulombic_efficiency"]
        d = data.get("diffusion_coefficient_cm2_s")
        if d is None:
            d = next((x for k, x in data.items() if k.startswith("diffusion_coefficient") and
                      k.endswith("cm2_s") and isinstance(x, int | float)), None)
        if d is not None:
            v.diffusion_coefficient_cm2_s = d

    def table(self) -> Table:
        t = Table(title=f"cyclerctl monitor — {len(self.channels)} channel(s)", expand=False)
        for name in ("node", "ch", "state", "step", "cycle", "V", "I / mA", "T / °C", "capacity",
                     "CE / %", "D / cm²/s"):
            t.add_column(name, justify="left" if name in ("node", "ch", "state") else "right")

        def f(x, fmt):
            return "—" if x is None else format(x, fmt)

        for (node, _), v in sorted(self.channels.items()):
            status = self.nodes.get(node, {}).get("state")
            node_cell = node if status in (None, "online") else f"{node} ({status})"
            cap = (f"{v.capacity_mah_g:.1f} mAh/g" if v.capacity_mah_g is not None else
                   f"{v.capacity_mah:.4g} mAh" if v.capacity_mah is not None else "—")
            ce = v.coulombic_efficiency
            if ce is not None and ce <= 1.5:
                ce = ce * 100
            step = "—" if v.step_id is None else f"{v.step_id} (#{v.step_count})"
            t.add_row(node_cell, v.ch, v.state, step, f(v.cycle_count, "d"), f(v.voltage_volt, ".4f"),
                      f(None if v.current_ampere is None else v.current_ampere * 1e3, ".4f"),
                      f(v.temperature_t1_celsius, ".1f"), cap, f(ce, ".2f"),
                      f(v.diffusion_coefficient_cm2_s, ".2e"))
        return t


def filters(root: str = ROOT) -> list[str]:
    return [f"{root}/+/status", f"{root}/+/ch/+/state", f"{root}/+/ch/+/desc", f"{root}/+/ch/+/data",
            f"{root}/+/ch/+/event", f"{root}/+/ch/+/metric/#"]


async def watch(url: str, model: MonitorModel, window: float | None, refresh=None) -> None:
    """Fill `model` from the broker: for `window` seconds (None = until cancelled), calling
    `refresh()` after each message batch. Reconnects with a fresh client when the broker drops."""
    addr = parse_url(url)
    end = None if window is None else time.monotonic() + window
    first = True
    while end is None or time.monotonic() < end:
        try:
            async with new_client(addr, max_queued_incoming=10000) as client:
                for flt in filters(model.root):
                    await client.subscribe(flt, qos=0)
                first = False
                async with asyncio.timeout(None if end is None else max(0.0, end - time.monotonic())):
                    async for message in client.messages:
                        model.feed(str(message.topic), bytes(message.payload or b""))
                        if refresh is not None:
                            refresh()
        except TimeoutError:
            return
        except MqttError as exc:
            if first or end is not None:
                from ..errors import BrokerError

                raise BrokerError(f"cannot read from broker {addr.url()}: {exc}") from None
            await asyncio.sleep(1.0)
