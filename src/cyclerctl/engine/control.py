"""Operator actions on running channels: pause, resume, skip, stop, abort.

Each action is validated against the channel's state machine and written to the append-only audit
table (accepted or refused, with who asked and from where) ahead of anything the channel's runner
writes when it carries the action out; the call returns once the audit row is committed. Used by the CLI, the MQTT command handler and tests.
"""

from __future__ import annotations

from .runner import ChannelRunner
from .states import OPERATOR_ACTIONS, IllegalTransition


class RunControl:
    """The control surface of every channel in this process."""

    def __init__(self, runners: dict[str, ChannelRunner], journal) -> None:
        self.runners = runners
        self.journal = journal

    @property
    def channels(self) -> list[str]:
        return list(self.runners)

    def state(self, ch: str) -> str | None:
        r = self.runners.get(ch)
        return None if r is None else r.sm.state.value

    async def pause(self, ch: str, actor: str | None = None, source: str | None = None,
                    request_id: str | None = None) -> tuple[bool, str]:
        """Safe state now; the step continues on resume with its timers where they were."""
        return await self.act("pause", ch, actor, source, request_id)

    async def resume(self, ch: str, actor: str | None = None, source: str | None = None,
                     request_id: str | None = None) -> tuple[bool, str]:
        return await self.act("resume", ch, actor, source, request_id)

    async def skip(self, ch: str, actor: str | None = None, source: str | None = None,
                   request_id: str | None = None) -> tuple[bool, str]:
        """End the current step (reason "skip") and go on with the next instruction."""
        return await self.act("skip", ch, actor, source, request_id)

    async def stop(self, ch: str, actor: str | None = None, source: str | None = None,
                   request_id: str | None = None) -> tuple[bool, str]:
        """End the run cleanly: the step ends (reason "stop"), safe state, status "stopped"."""
        return await self.act("stop", ch, actor, source, request_id)

    async def abort(self, ch: str, actor: str | None = None, source: str | None = None,
                    request_id: str | None = None) -> tuple[bool, str]:
        """Safe state at once; no further step."""
        return await self.act("abort", ch, actor, source, request_id)

    async def act(self, action: str, ch: str, actor: str | None = None, source: str | None = None,
                  request_id: str | None = None, args: dict | None = None) -> tuple[bool, str]:
        runner = self.runners.get(ch)
        if action not in OPERATOR_ACTIONS:
            ok, msg = False, f"unknown action {action!r}; use one of {', '.join(OPERATOR_ACTIONS)}"
        elif runner is None:
            ok, msg = False, f"no channel {ch!r}; channels: {', '.join(self.runners) or 'none'}"
        else:
            try:
                before = runner.sm.state
                after = runner.sm.apply(action)
                ok, msg = True, f"{ch}: {action} accepted ({before.value} -> {after.value})"
            except IllegalTransition as exc:
                ok, msg = False, f"{ch}: {exc}"
        self.journal.stage_audit(ch, action, actor, source, request_id, args,
                                 ("ok: " if ok else "refused: ") + msg)
        if runner is not None:
            self.journal.touch(ch)
        if ok:  # staged audit rows precede anything the runner writes for this action
            if action == "skip":
                runner.request_skip()
            else:
                runner.poke()
        await self.journal.commit()
        return ok, msg
