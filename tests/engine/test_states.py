"""Every (state, action) pair of the channel state machine: allowed ones land where the table says,
all others are refused with a message naming the state."""

from __future__ import annotations

import itertools

import pytest

from cyclerctl.engine.states import (
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    State,
    StateMachine,
    next_state,
)

EXPECTED = {
    ("idle", "start"): "running",
    ("idle", "abort"): "aborted",
    ("running", "pause"): "pausing",
    ("running", "skip"): "running",
    ("running", "stop"): "stopping",
    ("running", "finish"): "done",
    ("running", "abort"): "aborted",
    ("running", "fault"): "faulted",
    ("pausing", "paused"): "paused",
    ("pausing", "stop"): "stopping",
    ("pausing", "abort"): "aborted",
    ("pausing", "fault"): "faulted",
    ("paused", "resume"): "running",
    ("paused", "skip"): "paused",
    ("paused", "stop"): "stopping",
    ("paused", "abort"): "aborted",
    ("paused", "fault"): "faulted",
    ("stopping", "finish"): "done",
    ("stopping", "abort"): "aborted",
    ("stopping", "fault"): "faulted",
    ("faulted", "recover"): "running",
}


@pytest.mark.parametrize("state,action", list(itertools.product(list(State), list(TRANSITIONS))))
def test_every_state_action_pair(state, action):
    sm = StateMachine(state)
    want = EXPECTED.get((state.value, action))
    if want is None:
        assert not sm.can(action)
        with pytest.raises(IllegalTransition, match=f"cannot {action} a channel that is {state.value}"):
            sm.apply(action)
        assert sm.state == state
    else:
        assert sm.can(action)
        assert sm.apply(action) == State(want)
        assert sm.history == [(state, action, State(want))]


def test_final_states_accept_nothing():
    for st in FINAL:
        assert not any(st in t for t in TRANSITIONS.values())


def test_refusal_says_what_is_allowed():
    with pytest.raises(IllegalTransition, match="allowed now: resume, skip, stop, abort"):
        next_state(State.PAUSED, "pause")


def test_unknown_action():
    with pytest.raises(IllegalTransition, match="unknown action"):
        next_state(State.RUNNING, "explode")
