"""Commands over MQTT: ``cmd/{verb}`` (with ``args.ch``) and ``ch/{ch}/cmd/{verb}``.

Every command carries a request id (``req``) and an expiry (``not_after``, Unix seconds; MQTT 5
senders also set a message expiry). The reply goes to the MQTT 5 response topic, else to
``reply_to``, else to ``{node}/reply``. A command that is malformed, expired, unknown, or for an
unknown channel gets ``ok: false`` and changes nothing.

Who may command is the broker's decision (password file + ACL: only the ``operator`` role may publish
on ``cmd`` topics). The node adds one rule of its own: it refuses every command while its own broker
connection is anonymous, because then the broker cannot have checked anyone. Only the loopback demo
broker is run with ``commands="open"``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

from . import payloads, schemas
from .topics import VERBS, Topics

log = logging.getLogger("cyclerctl.mqtt")

ACTIONS = ("pause", "resume", "stop", "skip", "abort")
MAX_REPLAY = 1_000_000  # samples (or rows) per replay request


class RunControl(Protocol):
    """Operator actions of the engine; each validates against the channel state machine, writes the
    audit table and returns (ok, message)."""

    async def pause(self, ch: str, actor: str = ..., source: str = ..., request_id: str | None = ...) -> tuple[bool, str]: ...
    async def resume(self, ch: str, actor: str = ..., source: str = ..., request_id: str | None = ...) -> tuple[bool, str]: ...
    async def stop(self, ch: str, actor: str = ..., source: str = ..., request_id: str | None = ...) -> tuple[bool, str]: ...
    async def skip(self, ch: str, actor: str = ..., source: str = ..., request_id: str | None = ...) -> tuple[bool, str]: ...
    async def abort(self, ch: str, actor: str = ..., source: str = ..., request_id: str | None = ...) -> tuple[bool, str]: ...


class Refused(Exception):
    """A command that is not carried out; str() is the reply's error."""


class CommandHandler:
    """Validates and carries out commands; returns the reply to send."""

    def __init__(self, topics: Topics, control: RunControl | None, publisher, *, authenticated: bool,
                 open_commands: bool = False, source: str = "mqtt") -> None:
        self.topics = topics
        self.control = control
        self.publisher = publisher
        self.authenticated = authenticated
        self.open_commands = open_commands
        self.source = source
        self._done: OrderedDict[str, dict] = OrderedDict()  # req -> reply (QoS 1 may redeliver)

    async def handle(self, topic: str, payload: bytes, response_topic: str | None = None,
                     correlation: bytes | None = None) -> tuple[str, dict]:
        """(reply topic, reply payload) for one received command message."""
        reply_to, req, verb, ch = response_topic, None, None, None
        try:
            parsed = self.topics.parse_command(topic)
            if parsed is None:
                raise Refused(f"not a command topic: {topic}")
            ch_tid, verb = parsed
            try:
                cmd = payloads.loads(payload)
            except ValueError:
                raise Refused("payload is not JSON; send {\"v\":1,\"req\":...,\"not_after\":...,\"args\":{...}}") from None
            if isinstance(cmd, dict):
                req = cmd.get("req") if isinstance(cmd.get("req"), str) else None
                if reply_to is None and isinstance(cmd.get("reply_to"), str) and cmd["reply_to"]:
                    reply_to = cmd["reply_to"]
            if req is not None and req in self._done:
                return reply_to or self.topics.reply, self._done[req]
            problems = schemas.errors("command", cmd)
            if problems:
                raise Refused("malformed command: " + "; ".join(problems))
            if verb not in VERBS:
                raise Refused(f"unknown command {verb!r}; known: {', '.join(VERBS)}")
            if not (self.authenticated or self.open_commands):
                raise Refused("commands are refused: this node's broker connection is anonymous, so the broker "
                              "cannot have authorised the sender (connect with a user name; see docs/mqtt.md)")
            if time.time() > cmd["not_after"]:
                raise Refused(f"command expired at not_after={cmd['not_after']}")
            args = cmd.get("args", {})
            ch = self._channel(ch_tid, args, verb)
            actor = cmd.get("actor") or "mqtt"
            ok, message = await self._execute(verb, ch, args, actor, req)
        except Refused as exc:
            ok, message = False, str(exc)
        except Exception as exc:  # a bug must not kill the command loop; reply and log
            log.exception("mqtt: command failed")
            ok, message = False, f"internal error: {exc}"
        reply = {"v": payloads.VERSION, "req": req, "ok": ok, "verb": verb, "ch": ch,
                 "message": message if ok else None, "error": None if ok else message, "ts": time.time()}
        if req is not None:
            self._done[req] = reply
            while len(self._done) > 1000:
                self._done.popitem(last=False)
        log.info("mqtt: command %s %s req=%s -> %s", verb, ch, req, "ok" if ok else message)
        return reply_to or self.topics.reply, reply

    def _channel(self, ch_tid: str | None, args: dict, verb: str) -> str | None:
        known = self.publisher.channels
        if ch_tid is not None:
            if "ch" in args:
                raise Refused("args.ch is only for node-level commands (cmd/{verb}); the topic names the channel")
            ch = self.publisher.by_topic_id.get(ch_tid)
            if ch is None:
                raise Refused(f"unknown channel {ch_tid!r}; channels: {', '.join(known) or 'none'}")
            return ch
        if verb == "rebirth":
            return None
        ch = args.get("ch")
        if not isinstance(ch, str):
            raise Refused(f"{verb} needs args.ch (one of: {', '.join(known) or 'none'})")
        if ch in known:
            return ch
        if ch in self.publisher.by_topic_id:
            return self.publisher.by_topic_id[ch]
        raise Refused(f"unknown channel {ch!r}; channels: {', '.join(known) or 'none'}")

    async def _execute(self, verb: str, ch: str | None, args: dict, actor: str,
                       req: str) -> tuple[bool, str]:
        extra = set(args) - {"ch"} - ({"stream", "from_seq", "to_seq"} if verb == "replay" else set())
        if extra:
            raise Refused(f"unknown argument(s) for {verb}: {', '.join(sorted(extra))}")
        if verb == "rebirth":
            self.publisher.rebirth()
            return True, "birth, descriptors and states will be republished"
        if verb == "replay":
            return self._replay(ch, args)
        if self.control is None:
            raise Refused("this node has no run to control")
        method = getattr(self.control, verb)
        ok, message = await method(ch, actor=actor, source=self.source, request_id=req)
        return bool(ok), str(message)

    def _replay(self, ch: str, args: dict) -> tuple[bool, str]:
        stream = args.get("stream", "samples")
        if stream not in ("samples", "events", "metrics"):
            raise Refused(f"args.stream must be samples, events or metrics, not {stream!r}")
        lo, hi = args.get("from_seq"), args.get("to_seq")
        head = self.publisher.source.head(stream, ch)
        if hi is None:
            hi = head
        for name, value in (("from_seq", lo), ("to_seq", hi)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise Refused(f"args.{name} must be an integer ≥ 0, not {value!r}")
        if lo > hi:
            raise Refused(f"args.from_seq ({lo}) is after args.to_seq ({hi})")
        if hi > head:
            raise Refused(f"args.to_seq ({hi}) is beyond the last committed {stream} seq ({head})")
        if hi - lo + 1 > MAX_REPLAY:
            raise Refused(f"replay of {hi - lo + 1} rows is too large; ask for at most {MAX_REPLAY} at a time")
        try:
            self.publisher.request_replay(ch, stream, lo, hi)
        except OverflowError as exc:
            raise Refused(str(exc)) from None
        return True, f"replaying {stream} {lo}..{hi} of {ch}"
