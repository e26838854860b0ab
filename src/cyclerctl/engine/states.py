"""The per-channel state machine, as a table.

    idle ──start──▶ running ──pause──▶ pausing ──paused──▶ paused ──resume──▶ running
    running/pausing/paused ──stop──▶ stopping ──finish──▶ done
    running ──finish──▶ done                      (the program ran to its end)
    any live state ──abort──▶ aborted             (safe state at once, no further steps)
    running/pausing/paused/stopping ──fault──▶ faulted   (safety trip, instrument or journal error)
    faulted ──recover──▶ running                  (only by `cyclerctl resume`, from the journal)
    running ──skip──▶ running, paused ──skip──▶ paused   (the current step ends; pc moves on)

Every action not in the table is refused with a message naming the state; done and aborted are final.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import CyclerError


class State(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPING = "stopping"
    DONE = "done"
    ABORTED = "aborted"
    FAULTED = "faulted"


S = State

# action -> {from state: to state}
TRANSITIONS: dict[str, dict[State, State]] = {
    "start": {S.IDLE: S.RUNNING},
    "pause": {S.RUNNING: S.PAUSING},
    "paused": {S.PAUSING: S.PAUSED},
    "resume": {S.PAUSED: S.RUNNING},
    "skip": {S.RUNNING: S.RUNNING, S.PAUSED: S.PAUSED},
    "stop": {S.RUNNING: S.STOPPING, S.PAUSING: S.STOPPING, S.PAUSED: S.STOPPING},
    "finish": {S.RUNNING: S.DONE, S.STOPPING: S.DONE},
    "abort": {S.IDLE: S.ABORTED, S.RUNNING: S.ABORTED, S.PAUSING: S.ABORTED, S.PAUSED: S.ABORTED,
              S.STOPPING: S.ABORTED},
    "fault": {S.RUNNING: S.FAULTED, S.PAUSING: S.FAULTED, S.PAUSED: S.FAULTED, S.STOPPING: S.FAULTED},
    "recover": {S.FAULTED: S.RUNNING},
}

OPERATOR_ACTIONS = ("pause", "resume", "skip", "stop", "abort")
FINAL = frozenset({S.DONE, S.ABORTED})
TERMINAL = frozenset({S.DONE, S.ABORTED, S.FAULTED})  # the channel task ends in these


class IllegalTransition(CyclerError):
    """An action that the channel's current state does not allow."""


def next_state(state: State, action: str) -> State:
    """The state after `action`, or IllegalTransition saying what is allowed."""
    table = TRANSITIONS.get(action)
    if table is None:
        raise IllegalTransition(f"unknown action {action!r}; known: {', '.join(TRANSITIONS)}")
    try:
        return table[state]
    except KeyError:
        allowed = [a for a, t in TRANSITIONS.items() if state in t and a in OPERATOR_ACTIONS]
        hint = f"; allowed now: {', '.join(allowed)}" if allowed else ""
        raise IllegalTransition(f"cannot {action} a channel that is {state.value}{hint}") from None


class StateMachine:
    """The current state of one channel; changes only through the table."""

    def __init__(self, state: State = S.IDLE) -> None:
        self.state = State(state)
        self.history: list[tuple[State, str, State]] = []

    def can(self, action: str) -> bool:
        return self.state in TRANSITIONS.get(action, {})

    def apply(self, action: str) -> State:
        new = next_state(self.state, action)
        self.history.append((self.state, action, new))
        self.state = new
        return new
