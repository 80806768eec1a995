"""The transition table and the update it builds, over every pair of states."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from conveyor.exceptions import InvalidTransitionError
from conveyor.states import (
    ACTIVE_STATES,
    DONE_STATES,
    TRANSITIONS,
    FlowState,
    JobState,
    flow_state_from_jobs,
    transition,
)

S = JobState
PIPELINE = [
    S.READY,
    S.CHECKED_OUT,
    S.UPLOADED,
    S.SUBMITTED,
    S.RUNNING,
    S.TERMINATED,
    S.DOWNLOADED,
]


@pytest.mark.parametrize(("current", "new"), list(itertools.product(JobState, JobState)))
def test_every_pair_is_allowed_or_refused_by_the_table(current: JobState, new: JobState) -> None:
    if new in TRANSITIONS[current]:
        update = transition(current, new, by="test")
        assert update.set["state"] == new
        assert update.expect_state == current
        assert update.history is not None
        assert update.history["state"] == new
        assert update.history["by"] == "test"
    else:
        with pytest.raises(InvalidTransitionError, match=f"from {current} to {new}"):
            transition(current, new)


def test_the_normal_path_is_allowed_hop_by_hop_and_never_skips() -> None:
    path = [S.WAITING, *PIPELINE, S.COMPLETED]
    for here, there in itertools.pairwise(path):
        assert there in TRANSITIONS[here]
    for i, here in enumerate(PIPELINE):
        for later in PIPELINE[i + 2 :]:
            assert later not in TRANSITIONS[here], f"{here} may skip to {later}"


def test_no_state_goes_to_itself_and_every_state_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_remote_error_remembers_where_it_failed_and_can_go_back() -> None:
    for state in ACTIVE_STATES:
        update = transition(state, S.REMOTE_ERROR)
        assert update.set["previous_state"] == state
        assert state in TRANSITIONS[S.REMOTE_ERROR]


def test_done_states_set_ended_at_and_running_sets_started_at() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert transition(S.SUBMITTED, S.RUNNING, now=now).set["started_at"] == now
    for state in DONE_STATES:
        sources = [s for s in JobState if state in TRANSITIONS[s]]
        assert transition(sources[0], state, now=now).set["ended_at"] == now


def test_rerun_clears_ended_at() -> None:
    assert transition(S.COMPLETED, S.READY).set["ended_at"] is None


def test_extra_fields_ride_along() -> None:
    update = transition(S.READY, S.CHECKED_OUT, extra={"remote.run_dir": "/x"})
    assert update.set["remote.run_dir"] == "/x"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], FlowState.WAITING),
        ([S.READY, S.WAITING], FlowState.READY),
        ([S.COMPLETED, S.READY], FlowState.RUNNING),
        ([S.RUNNING, S.WAITING], FlowState.RUNNING),
        ([S.FAILED, S.WAITING], FlowState.FAILED),
        ([S.FAILED, S.RUNNING], FlowState.RUNNING),
        ([S.REMOTE_ERROR, S.COMPLETED], FlowState.FAILED),
        ([S.PAUSED, S.WAITING], FlowState.PAUSED),
        ([S.COMPLETED, S.COMPLETED], FlowState.COMPLETED),
        ([S.COMPLETED, S.STOPPED], FlowState.STOPPED),
        ([S.CANCELLED, S.COMPLETED], FlowState.CANCELLED),
        ([S.WAITING], FlowState.WAITING),
    ],
)
def test_flow_state_follows_its_jobs(states: list[JobState], expected: FlowState) -> None:
    assert flow_state_from_jobs(states) == expected
