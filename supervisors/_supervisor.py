"""The Supervisor: starts children in order, restarts them by strategy, stops them in reverse.

Why every child runs in a system task
-------------------------------------
Trio cannot kill a task. A child that shields itself from cancellation (or catches it) runs until
it decides to stop, and a nursery cannot exit before all its tasks have. Had the children run in
a nursery owned by `Supervisor.run`, one stubborn child would hold its supervisor, and with it
the whole daemon, forever.

So each incarnation of a child runs in a host task spawned with
`trio.lowlevel.spawn_system_task`. The host runs the child in its own task, with a `task_status`
that keeps `nursery.start`'s promises (`_HostStatus`), and tells the supervisor when the child is
ready and when it is gone. To stop a child the
supervisor cancels the host's cancel scope and waits, shielded, for at most the child's grace;
if the child still runs after that, the supervisor logs an error naming it and moves on. Hence
`run` returns within the sum of its children's graces, whatever the children do.

The price, paid knowingly:

- An abandoned child keeps running, unsupervised, until it returns by itself (`trio.run` still
  waits for it at the very end: Trio never forgets a task).
- Children do not sit below their supervisor in Trio's task tree but below the system nursery;
  the registry is the tree to look at.
- Cancellation does not flow into children by scope inheritance: the supervisor cancels them
  itself, in a shielded `finally`, so they stop in reverse start order with their own grace.
- A child's exception never escapes as such: the supervisor decides what it means. The one
  exception is a BaseException that is not an Exception (KeyboardInterrupt, SystemExit): the
  supervisor stops the other children and re-raises it.

What `run` raises
-----------------
`run` opens no nursery, so its errors arrive bare, never in an ExceptionGroup:
`RestartIntensityExceeded` when restarts come too fast, `ChildStartFailed` when a static child
fails during the initial start, `trio.Cancelled` when it is stopped from outside, and any
non-Exception BaseException a child raised. It never returns normally. (A nursery around it
wraps these as usual; catch them there with `except*`.)

One thing at a time
-------------------
Structural work (starting, stopping and restarting children, serving start_child and
terminate_child) happens in the supervisor's own task, one step at a time, as in OTP, so no two
steps ever race. Backoff never blocks that task: a restart is scheduled for a deadline and other
requests are served meanwhile. Starting a child does block it until the child is ready, so
children should call `task_status.started()` early and do slow work after it, and must not call
start_child on their own supervisor before they are ready (that would wait on itself).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn, TypeAlias

import trio

from ._backoff import Backoff
from ._context import ChildContext, current_child, set_current_child
from ._defaults import LOGGER_NAME, ROOT_NAME, SUPERVISOR_KIND, SUPERVISOR_SHUTDOWN_GRACE
from ._errors import (
    ChildStartFailed,
    DuplicateChild,
    RestartIntensityExceeded,
    SupervisorNotRunning,
    UnknownChild,
    describe_error,
    unwrap_error,
)
from ._registry import ChildEntry, ChildState, Entry, Registry
from ._spec import ChildSpec, Intensity, Restart, Strategy, check_name

logger = logging.getLogger(LOGGER_NAME)


class Supervisor:
    """Runs child specs as a group under one restart strategy.

    The object is a long-lived handle; `run` is one incarnation of it. A supervisor that is
    itself a child (see `spec`) gets a fresh incarnation on every restart: its static children
    start again from `specs`, its dynamic children are gone (as in OTP), and callers keep using
    the same object for `start_child` (which raises SupervisorNotRunning in between).

    `registry` is required for a root supervisor, which registers itself at path `name`. A
    supervisor running inside a supervised child takes that child's path and registry from
    `current_child()`: as a child of its own (`spec`) or inside an actor that supervises helpers
    of its own, whose entries then appear below the actor's.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity | None = None,
        backoff: Backoff | None = None,
        name: str = ROOT_NAME,
        registry: Registry | None = None,
    ) -> None:
        check_name(name, "supervisor name")
        seen: set[str] = set()
        for spec in children:
            if spec.id in seen:
                raise DuplicateChild(spec.id)
            seen.add(spec.id)
        self.specs: tuple[ChildSpec, ...] = tuple(children)
        self.strategy = strategy
        self.intensity = intensity if intensity is not None else Intensity()
        self.backoff = backoff if backoff is not None else Backoff()
        self.name = name
        self._registry = registry
        self._run: _Run | None = None

    def spec(
        self,
        id: str,
        *,
        restart: Restart = Restart.PERMANENT,
        shutdown: float = SUPERVISOR_SHUTDOWN_GRACE,
    ) -> ChildSpec:
        """This supervisor as a child of another one (kind "supervisor")."""
        return ChildSpec(
            id=id, start=self.run, restart=restart, shutdown=shutdown, kind=SUPERVISOR_KIND
        )

    @property
    def path(self) -> str | None:
        """Registry path of the current incarnation; None when not running."""
        return None if self._run is None else self._run.path

    @property
    def running(self) -> bool:
        """True from `task_status.started()` until it begins to stop."""
        return self._run is not None and self._run.accepting

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report ready, then supervise until cancelled or failed.

        See the module docstring for what it raises. On the way out it stops every child in
        reverse start order, each within its grace.
        """
        if self._run is not None:
            raise RuntimeError(f"supervisor {self._run.path!r} is already running")
        run = self._new_run()
        self._run = run
        try:
            await run.main(task_status)
        finally:
            self._run = None

    async def start_child(self, spec: ChildSpec) -> object:
        """Start a dynamic child and wait until it is ready; return what it passed to started().

        Raises DuplicateChild if the id is taken, ChildStartFailed if the child fails before it
        is ready (it is then not kept), SupervisorNotRunning if this supervisor is not running.
        Cancelling the caller while the child starts stops the child again.
        """
        call = _StartCall(spec)
        self._submit(call)
        return await call.result()

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (within its grace) and forget it, static or dynamic.

        Raises UnknownChild if no such child. The child is stopped even if the caller is
        cancelled while waiting.
        """
        call = _TerminateCall(child_id)
        self._submit(call)
        await call.result()

    def children(self) -> list[ChildEntry]:
        """The direct children in start order; empty when not running."""
        if self._run is None:
            return []
        return [child.entry.freeze() for child in self._run.children.values()]

    def _submit(self, call: _StartCall | _TerminateCall) -> None:
        run = self._run
        if run is None or not run.accepting:
            raise SupervisorNotRunning(self.path or self.name)
        run.send.send_nowait(call)

    def _new_run(self) -> _Run:
        context = current_child()
        if context is not None and (self._registry is None or self._registry is context.registry):
            return _Run(self, context.path, context.registry, own=None)
        if self._registry is None:
            raise RuntimeError(
                f"supervisor {self.name!r} is not a supervised child, so it needs registry="
            )
        own = self._registry.add(self.name, SUPERVISOR_KIND)
        return _Run(self, self.name, self._registry, own=own)


@dataclass(eq=False, slots=True)
class _Child:
    spec: ChildSpec
    entry: Entry
    dynamic: bool
    host: _Host | None = None
    restart_at: float | None = None
    attempt: int = 0
    """Consecutive restarts so far, for the backoff."""
    up_since: float | None = None

    @property
    def alive(self) -> bool:
        """Running, starting, or waiting to be restarted."""
        return self.host is not None or self.restart_at is not None


@dataclass(eq=False, slots=True)
class _Host:
    """One incarnation of one child: the system task running it, and what came of it."""

    child: _Child
    context: ChildContext
    notify: trio.MemorySendChannel[_Message]
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: trio.Event = field(default_factory=trio.Event)
    """Set when the child is ready or has failed to become ready."""
    done: trio.Event = field(default_factory=trio.Event)
    started: bool = False
    watched: bool = False
    """Its exit is news to the supervisor (and not the result of a stop it asked for)."""
    value: object = None
    error: BaseException | None = None


class _HostStatus:
    """The `task_status` a child is started with. The child runs in its host's own task, not in
    a task of its own under a nursery's `start` (which would cost each child a second task and
    a nursery for as long as it lives); this keeps `nursery.start`'s promises: `started(value)`
    makes the child ready with that value, a second call is an error, a child that returns
    without calling it failed to start, and one called after the start was cancelled does not
    count (the child is being cancelled)."""

    __slots__ = ("_called", "_host")

    def __init__(self, host: _Host) -> None:
        self._host = host
        self._called = False

    def started(self, value: object = None) -> None:
        if self._called:
            raise RuntimeError("called 'started' twice on the same task status")
        self._called = True
        host = self._host
        host.value = value
        if not host.cancel_scope.cancel_called:
            host.started = True
            host.ready.set()


async def _host(host: _Host) -> None:
    """Body of the system task running one child (in this task itself, see `_HostStatus`). It
    must never raise: system tasks that raise crash the whole Trio run; the supervisor gets the
    outcome instead."""
    set_current_child(host.context)
    status = _HostStatus(host)
    try:
        with host.cancel_scope:
            await host.child.spec.start(task_status=status)
        if not status._called:
            raise RuntimeError("child exited without calling task_status.started()")
    except BaseException as error:
        host.error = unwrap_error(error)
    finally:
        host.done.set()
        host.ready.set()
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            host.notify.send_nowait(host)


class _Call:
    """A request from another task, answered by the supervisor's task."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: object = None
        self.error: BaseException | None = None
        self.abandoned = False

    def succeed(self, value: object) -> None:
        self.value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()

    async def result(self) -> object:
        try:
            await self.done.wait()
        except trio.Cancelled:
            self.abandoned = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


class _StartCall(_Call):
    def __init__(self, spec: ChildSpec) -> None:
        super().__init__()
        self.spec = spec


class _TerminateCall(_Call):
    def __init__(self, child_id: str) -> None:
        super().__init__()
        self.child_id = child_id


_Message: TypeAlias = _Host | _StartCall | _TerminateCall


class _Run:
    """One incarnation of a Supervisor. A restart builds a new one, so no state leaks across."""

    def __init__(self, supervisor: Supervisor, path: str, registry: Registry, own: Entry | None):
        self.supervisor = supervisor
        self.path = path
        self.registry = registry
        self.own = own
        self.children: dict[str, _Child] = {}  # in start order
        # Unbounded on purpose: each host sends once per incarnation and each caller once per
        # call, so the backlog is bounded by children plus waiting callers, and a system task
        # must never block on a full channel.
        self.send, self.receive = trio.open_memory_channel[_Message](math.inf)
        self.accepting = False
        # Recent restarts, for the intensity (a list: an empty deque takes 600 bytes, and a
        # supervisor runs per session); children waiting for a restart, so that a message
        # finds out without looking at every child.
        self.restart_times: list[float] = []
        self.waiting: set[_Child] = set()

    async def main(self, task_status: trio.TaskStatus[None]) -> None:
        failure: BaseException | None = None
        try:
            for spec in self.supervisor.specs:
                await self.start(self.add(spec, dynamic=False))
            self.accepting = True
            if self.own is not None:
                self.own.state = ChildState.RUNNING
                self.own.started_at = self.registry.now()
            logger.info("supervisor %s running (%s)", self.path, self.supervisor.strategy)
            task_status.started()
            await self.loop()
        except BaseException as error:
            failure = error
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self.shutdown(failure)

    async def loop(self) -> NoReturn:
        while True:
            message: _Message | None = None
            restart_at = self.next_restart_at()
            if restart_at == math.inf:
                message = await self.receive.receive()
            else:
                with trio.move_on_at(restart_at):
                    message = await self.receive.receive()
            if message is None:
                await self.restart_due()
            elif isinstance(message, _Host):
                await self.host_exited(message)
            elif isinstance(message, _StartCall):
                await self.serve_start(message)
            else:
                await self.serve_terminate(message)

    async def shutdown(self, failure: BaseException | None) -> None:
        self.accepting = False
        for child in reversed(list(self.children.values())):
            await self.stop(child, ChildState.STOPPED)
        self.send.close()
        while True:
            try:
                message = self.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(message, _Call):
                message.fail(SupervisorNotRunning(self.path))
        for child in self.children.values():
            self.registry.remove(child.entry.path)
            if child.dynamic:
                _close(child)
        self.children.clear()
        self.waiting.clear()
        if self.own is not None:
            if failure is None or isinstance(failure, trio.Cancelled):
                self.own.state = ChildState.STOPPED
            else:
                self.own.state = ChildState.FAILED
                self.own.last_error = describe_error(unwrap_error(failure))
        logger.info("supervisor %s stopped its children", self.path)

    # Children

    def add(self, spec: ChildSpec, *, dynamic: bool) -> _Child:
        entry = self.registry.add(f"{self.path}/{spec.id}", spec.kind)
        child = _Child(spec, entry, dynamic)
        self.children[spec.id] = child
        return child

    def forget(self, child: _Child) -> None:
        del self.children[child.spec.id]
        self.waiting.discard(child)
        self.registry.remove(child.entry.path)
        _close(child)

    async def start(self, child: _Child) -> object:
        """Start one incarnation and wait until it is ready; ChildStartFailed if it is not."""
        entry = child.entry
        entry.incarnation += 1
        entry.state = ChildState.STARTING
        entry.info = {}
        entry.inbox = None
        child.up_since = None
        host = _Host(child, ChildContext(entry, self.registry), self.send)
        child.host = host
        trio.lowlevel.spawn_system_task(
            _host, host, name=f"supervised {entry.path}", context=contextvars.copy_context()
        )
        try:
            await host.ready.wait()
        except BaseException:
            await self.stop(child, ChildState.STOPPED)
            raise
        if not host.started:
            child.host = None
            error = host.error or RuntimeError("cancelled before it reported ready")
            entry.state = ChildState.FAILED
            entry.last_error = describe_error(error)
            if not isinstance(error, Exception):
                raise error
            # The failure goes up as ChildStartFailed, whose receiver decides how loud to be;
            # the traceback is kept for debugging only.
            logger.error("%s failed to start: %s", entry.path, entry.last_error)
            logger.debug("%s start failure", entry.path, exc_info=error)
            raise ChildStartFailed(child.spec.id, error) from error
        host.watched = True
        child.up_since = trio.current_time()
        entry.state = ChildState.RUNNING
        entry.started_at = self.registry.now()
        logger.info("%s started", entry.path)
        return host.value

    async def stop(self, child: _Child, state_after: ChildState) -> None:
        """Cancel the child, wait (shielded) at most its grace, then give up on it loudly."""
        entry = child.entry
        was_pending = child.restart_at is not None
        child.restart_at = None
        self.waiting.discard(child)
        host = child.host
        if host is None:
            if was_pending:
                entry.state = state_after
            return
        child.host = None
        host.watched = False
        entry.state = ChildState.STOPPING
        host.cancel_scope.cancel()
        grace = child.spec.shutdown
        with trio.move_on_after(grace, shield=True):
            await host.done.wait()
        if not host.done.is_set():
            entry.state = ChildState.FAILED
            entry.last_error = f"ignored cancellation for its {grace:g} s shutdown grace; abandoned"
            logger.error(
                "%s ignored cancellation for its %g s shutdown grace; giving up on it "
                "(it keeps running, unsupervised, until it returns by itself)",
                entry.path,
                grace,
            )
            return
        if host.error is not None:
            entry.last_error = describe_error(host.error)
            logger.warning(
                "%s raised while stopping: %s", entry.path, entry.last_error, exc_info=host.error
            )
        entry.state = state_after
        logger.info("%s stopped", entry.path)

    # Exits and restarts

    async def host_exited(self, host: _Host) -> None:
        if not host.watched:
            return  # a stop we asked for, or a start that already failed
        host.watched = False
        child = host.child
        child.host = None
        error = host.error
        if error is not None and not isinstance(error, Exception):
            child.entry.state = ChildState.FAILED
            child.entry.last_error = describe_error(error)
            raise error
        await self.exited(child, error)

    async def exited(self, child: _Child, error: BaseException | None) -> None:
        """A child ended on its own (or failed to restart): restart it and its group, or not."""
        entry = child.entry
        how = "exited" if error is None else f"crashed: {describe_error(error)}"
        if error is not None:
            entry.last_error = describe_error(error)
        if not _wants_restart(child.spec.restart, error):
            entry.state = ChildState.STOPPED if error is None else ChildState.FAILED
            level = logging.INFO if error is None else logging.ERROR
            logger.log(level, "%s %s; %s, not restarted", entry.path, how, child.spec.restart)
            if child.dynamic:
                self.forget(child)
            return
        self.count_restart(child, error)
        delay = self.next_delay(child)
        group = self.restart_group(child)
        for other in reversed(group):
            if other is not child:
                await self.stop(other, ChildState.RESTARTING)
        restart_at = trio.current_time() + delay
        for member in group:
            member.restart_at = restart_at
            self.waiting.add(member)
            member.entry.state = ChildState.RESTARTING
        logger.warning(
            "%s %s; restarting %s in %.3g s",
            entry.path,
            how,
            ", ".join(member.spec.id for member in group),
            delay,
            exc_info=error,
        )

    def count_restart(self, child: _Child, error: BaseException | None) -> None:
        """Raise RestartIntensityExceeded on the restart that is one too many."""
        intensity = self.supervisor.intensity
        now = trio.current_time()
        times = self.restart_times
        times.append(now)
        times[:] = [at for at in times if at > now - intensity.period]
        if len(times) > intensity.max_restarts:
            child.entry.state = ChildState.FAILED
            failure = RestartIntensityExceeded(
                child.spec.id,
                error,
                max_restarts=intensity.max_restarts,
                period=intensity.period,
            )
            logger.error("%s gives up: %s", self.path, failure)
            raise failure from error

    def next_delay(self, child: _Child) -> float:
        backoff = self.supervisor.backoff
        up = child.up_since
        if up is not None and trio.current_time() - up >= backoff.reset_after:
            child.attempt = 0
        delay = backoff.delay(child.attempt)
        child.attempt += 1
        return delay

    def restart_group(self, child: _Child) -> list[_Child]:
        """The children to restart with `child`, in start order."""
        strategy = self.supervisor.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [child]
        alive = [other for other in self.children.values() if other is child or other.alive]
        if strategy is Strategy.ONE_FOR_ALL:
            return alive
        return alive[alive.index(child) :]

    def next_restart_at(self) -> float:
        pending = [c.restart_at for c in self.waiting if c.restart_at is not None]
        return min(pending, default=math.inf)

    async def restart_due(self) -> None:
        now = trio.current_time()
        for child in list(self.children.values()):
            if self.children.get(child.spec.id) is not child:
                continue  # forgotten while an earlier child restarted
            if child.restart_at is None or child.restart_at > now:
                continue
            child.restart_at = None
            self.waiting.discard(child)
            child.entry.restarts += 1
            try:
                await self.start(child)
            except ChildStartFailed as failure:
                await self.exited(child, failure.error)

    # Requests from other tasks

    async def serve_start(self, call: _StartCall) -> None:
        try:
            if call.abandoned:
                return
            spec = call.spec
            if spec.id in self.children:
                call.fail(DuplicateChild(spec.id))
                return
            child = self.add(spec, dynamic=True)
            try:
                value = await self.start(child)
            except ChildStartFailed as failure:
                self.forget(child)
                call.fail(failure)
                return
            if call.abandoned:
                await self.stop(child, ChildState.STOPPED)
                self.forget(child)
                return
            call.succeed(value)
        finally:
            if not call.done.is_set():
                call.fail(SupervisorNotRunning(self.path))

    async def serve_terminate(self, call: _TerminateCall) -> None:
        try:
            child = self.children.get(call.child_id)
            if child is None:
                call.fail(UnknownChild(call.child_id))
                return
            await self.stop(child, ChildState.STOPPED)
            self.forget(child)
            call.succeed(None)
        finally:
            if not call.done.is_set():
                call.fail(SupervisorNotRunning(self.path))


def _close(child: _Child) -> None:
    closing = child.spec.closing
    if closing is None:
        return
    try:
        closing()
    except Exception:
        # A hook that fails must not take the supervisor down with the child it forgets.
        logger.exception("%s: its closing hook raised", child.entry.path)


def _wants_restart(restart: Restart, error: BaseException | None) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return error is not None
    return False
