"""The exceptions the library raises, drawn as one tree.

    SupervisorError                 base class: `except SupervisorError` catches them all
    ├── ChildStartFailed            a child raised (or returned) before task_status.started()
    ├── RestartIntensityExceeded    too many restarts too fast; the supervisor stopped its children
    ├── DuplicateChild              a child with that id is already supervised here
    ├── UnknownChild                no child with that id is supervised here
    └── SupervisorNotRunning        a dynamic call reached a supervisor that is not running

Invalid arguments (a spec id containing "/", a negative grace, ...) raise `ValueError`, as
anywhere else in Python.
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class of every error this library raises on purpose."""


class ChildStartFailed(SupervisorError):
    """A child failed before it reported ready; `error` is what it raised."""

    def __init__(self, child_id: str, error: BaseException) -> None:
        super().__init__(f"child {child_id!r} failed to start: {describe_error(error)}")
        self.child_id = child_id
        self.error = error


class RestartIntensityExceeded(SupervisorError):
    """A supervisor saw more than `max_restarts` restarts within `period` seconds.

    It has already stopped all its children when this is raised. `child_id` is the child whose
    exit tipped it over and `last_error` what that child raised (None if it exited normally, which
    a permanent child is not allowed to do either). The same error is the `__cause__`.
    """

    def __init__(
        self,
        child_id: str,
        last_error: BaseException | None,
        *,
        max_restarts: int,
        period: float,
    ) -> None:
        super().__init__(
            f"child {child_id!r} needed more than {max_restarts} restarts in {period:g} s; "
            f"last error: {describe_error(last_error)}"
        )
        self.child_id = child_id
        self.last_error = last_error
        self.max_restarts = max_restarts
        self.period = period


class DuplicateChild(SupervisorError):
    """A child with this id is already supervised by the same supervisor."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"a child with id {child_id!r} is already supervised here")
        self.child_id = child_id


class UnknownChild(SupervisorError):
    """No child with this id is supervised by this supervisor."""

    def __init__(self, child_id: str) -> None:
        super().__init__(f"no child with id {child_id!r} is supervised here")
        self.child_id = child_id


class SupervisorNotRunning(SupervisorError):
    """start_child / terminate_child reached a supervisor that is not (or no longer) running."""

    def __init__(self, name: str) -> None:
        super().__init__(f"supervisor {name!r} is not running")
        self.name = name


def unwrap_error(error: BaseException) -> BaseException:
    """Strip the one-exception groups nurseries wrap around a child's error.

    A child that raises ValueError after `started()` surfaces as ExceptionGroup([ValueError]),
    possibly nested once per nursery it ran in; the leaf is what a human wants to read.
    """
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def describe_error(error: BaseException | None) -> str:
    """One line for logs and the registry: "ValueError: boom"."""
    if error is None:
        return "none (it exited normally)"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
