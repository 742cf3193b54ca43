"""The supervisor process: the whole actor tree, assembled from the configuration.

    root (one_for_one)
    ├── admin        the local socket `anycode tree` reads
    ├── store        the SQLite connection (one worker thread)
    ├── sandboxes    the provider (docker | ecs | local)
    ├── watchdog     timeouts, dead sandboxes, orphans
    ├── retention    deletes ended sessions' events and interactions after retention_days
    ├── directory    live sessions by id, so any chat actor reaches any session of its chat
    ├── budget:<p>   the bot-wide rate budget of each platform, drawn from by every flusher
    ├── chats        dynamic: chat:<platform>:<id> → flusher + actor
    ├── sessions     dynamic: session:<id> → streams → stream:<id>
    ├── pool         sandboxes kept ready per agent    (when [pool] names an agent)
    ├── router       platform events → chat actors; paces each user's commands
    ├── recovery     reattaches what a previous run left running, then exits
    ├── telegram     long polling            (when configured)
    ├── slack        Socket Mode             (when configured)
    └── api          the HTTP API and dashboard on hypercorn (when [api] is configured)

Children start in this order and stop in reverse, so on shutdown the platform clients stop first
(no new work comes in), then every session removes its sandbox and says goodbye in its chat
while the chats' flushers still run, and the store closes last.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

import trio

from anycode_actors.actors.admin import AdminServer
from anycode_actors.actors.budget import Budget, Lane
from anycode_actors.actors.chat import ChatActor, ChatInbox, Notice, Reattach
from anycode_actors.actors.checkpoint import CheckpointStore
from anycode_actors.actors.commands import short_id
from anycode_actors.actors.directory import Register, SessionDirectory
from anycode_actors.actors.flusher import Flusher
from anycode_actors.actors.lobby import Lobby
from anycode_actors.actors.pool import SandboxPool
from anycode_actors.actors.publisher import Publisher, Requester, forges_for
from anycode_actors.actors.retention import Retention
from anycode_actors.actors.router import ChatStopped, CommandRate, Deliver, Router
from anycode_actors.actors.session import SessionActor
from anycode_actors.actors.session_api import Recovered, SessionClosed, SessionHandle
from anycode_actors.actors.watchdog import ORPHAN_AGE, Watchdog
from anycode_actors.agents import (
    PermissionRequested,
    PermissionResolved,
    TextDelta,
    ToolCall,
    TurnEnded,
)
from anycode_actors.agents.events import UnknownEvent
from anycode_actors.agents.session import Resume
from anycode_actors.api import ApiPlatform
from anycode_actors.api.platform import ApiTokenMissing
from anycode_actors.chat.base import Attachment, ButtonPress, ChatClient, ChatRef
from anycode_actors.config import Config
from anycode_actors.errors import AnycodeError
from anycode_actors.git import GitCredential, MirrorCache, parse_repo_ref
from anycode_actors.git.forges import Forge, GitHubForge, GitLabForge
from anycode_actors.sandboxes.base import SandboxProvider
from anycode_actors.store import Session, SessionStatus, Store, StoreUnavailable
from supervisors import (
    ChildSpec,
    ChildStartFailed,
    DuplicateChild,
    Intensity,
    Registry,
    Restart,
    Supervisor,
)

log = logging.getLogger(__name__)

# A session needs time to remove its sandbox and post its last words when the daemon stops.
SESSION_SHUTDOWN: Final = 90.0
CHAT_SHUTDOWN: Final = 15.0
CHAT_RESTART_WAIT: Final = 5.0


def daemon_id_for(config: Config) -> str:
    """Stable across restarts of the same deployment (same database), different between two
    deployments on one Docker engine: providers only touch sandboxes carrying this id."""
    digest = hashlib.sha256(str(config.database.path.resolve()).encode()).hexdigest()
    return f"d{digest[:11]}"


def make_provider(config: Config, daemon_id: str) -> SandboxProvider:
    provider = config.sandbox.provider
    if provider == "docker":
        from anycode_actors.sandboxes.docker import DockerProvider

        return DockerProvider(config.docker, daemon_id)
    if provider == "ecs":
        from anycode_actors.sandboxes.ecs import EcsProvider

        return EcsProvider(config.ecs, daemon_id)
    from anycode_actors.sandboxes.local import LocalProvider

    return LocalProvider(config.local, daemon_id)


def make_clients(config: Config) -> list[ChatClient]:
    clients: list[ChatClient] = []
    if config.telegram is not None:
        from anycode_actors.chat.telegram import TelegramClient

        clients.append(TelegramClient(config.telegram))
    if config.slack is not None:
        from anycode_actors.chat.slack import SlackClient

        clients.append(SlackClient(config.slack))
    if config.api is not None:
        clients.append(ApiPlatform(config))
    return clients


def _budget_for(client: ChatClient) -> Budget:
    lanes = client.rate_lanes.values()
    return Budget({lane.name: Lane(lane.per_second, lane.burst) for lane in lanes})


class Daemon:
    """Builds and runs the tree. `provider` and `clients` may be given (tests, the demo)."""

    def __init__(
        self,
        config: Config,
        *,
        provider: SandboxProvider | None = None,
        clients: Sequence[ChatClient] | None = None,
        registry: Registry | None = None,
        watchdog_interval: float = 30.0,
        orphan_age: float = ORPHAN_AGE,
    ) -> None:
        self.config = config
        self.daemon_id = daemon_id_for(config)
        self.registry = registry or Registry()
        self._provider = provider
        self._clients = list(clients) if clients is not None else make_clients(config)
        self._clients_by_platform = {client.platform: client for client in self._clients}
        self._budgets = {
            client.platform: Budget(
                {
                    lane.name: Lane(lane.per_second, lane.burst)
                    for lane in client.rate_lanes.values()
                }
            )
            for client in self._clients
        }
        self._store: Store | None = None
        self.watchdog: Watchdog | None = None
        self.pool: SandboxPool | None = None
        self._watchdog_interval = watchdog_interval
        self._orphan_age = orphan_age
        self.chats = Supervisor(name="chats")
        self.sessions = Supervisor(name="sessions")
        limits = config.limits
        self.lobby = Lobby(
            config,
            self._clients_by_platform,
            {platform: budget.address() for platform, budget in self._budgets.items()},
        )
        self.router = Router(
            self._start_chat,
            rate=CommandRate(limits.commands_per_second, limits.command_burst),
            lobby=self.lobby.address(),
        )
        self.directory = SessionDirectory()
        self._mirrors = MirrorCache(config.git.cache_dir / "mirrors")
        self.admin = AdminServer.from_config(config.admin, self.registry, daemon_id=self.daemon_id)

    # --- the tree -------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "the daemon is not running"
        return self._store

    @property
    def provider(self) -> SandboxProvider:
        assert self._provider is not None, "the daemon is not running"
        return self._provider

    def _root(self) -> Supervisor:
        chats_spec = self.chats.spec("chats", shutdown=CHAT_SHUTDOWN + 5)
        children: list[ChildSpec] = [
            # First up and last down, so `anycode tree` can watch start-up and shutdown too.
            ChildSpec("admin", self.admin.run, kind="worker"),
            ChildSpec("watchdog", self._run_watchdog, kind="actor"),
            ChildSpec("retention", self._run_retention, kind="worker"),
            self.directory.spec("directory"),
            chats_spec,
            self.sessions.spec("sessions", shutdown=SESSION_SHUTDOWN + 5),
            self.router.spec("router"),
            ChildSpec("recovery", self._run_recovery, restart=Restart.TEMPORARY, kind="worker"),
        ]
        if self.pool is not None:
            # After the sessions (before the router), so it stops, removing its sandboxes,
            # before them.
            at = next(i for i, child in enumerate(children) if child.id == "sessions") + 1
            children.insert(at, self.pool.spec("pool", shutdown=SESSION_SHUTDOWN))
        budgets = [budget.spec(f"budget:{platform}") for platform, budget in self._budgets.items()]
        # Before the chats and the lobby, who draw from them, and stopped after them.
        children[children.index(chats_spec) : children.index(chats_spec)] = [
            *budgets,
            self.lobby.spec("lobby"),
        ]
        for client in self._clients:
            children.append(ChildSpec(client.platform, self._client_runner(client), kind="worker"))
        return Supervisor(
            children,
            registry=self.registry,
            intensity=Intensity(max_restarts=10, period=60.0),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ready once every static child is; never returns. Errors arrive bare (no group):
        `StoreUnavailable` when the database cannot be opened, `ChildStartFailed` when a child
        cannot start, `RestartIntensityExceeded` later.

        The store and the sandbox provider are opened first, outside the tree, and every actor
        that needs them is given them as plain dependencies: they outlive every actor, so no
        actor can hold one that a restart has replaced."""
        async with Store.open(self.config.database.path) as store:
            self._store = store
            if self._provider is None:
                self._provider = make_provider(self.config, self.daemon_id)
            for client in self._clients:
                if isinstance(client, ApiPlatform):
                    client.attach(store, self.admin.snapshot)
            pool = SandboxPool(self.config, self._provider, store)
            self.pool = pool if pool.enabled else None
            await self._root().run(task_status=task_status)

    # --- static children ------------------------------------------------------------------------

    async def _run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self.watchdog is None:
            self.watchdog = Watchdog(
                self.provider,
                self.store,
                self.directory.address(),
                timeout=timedelta(minutes=float(self.config.session.timeout_minutes)),
                interval=self._watchdog_interval,
                orphan_age=self._orphan_age,
                held=self._pool_held,
            )
        await self.watchdog.run(task_status=task_status)

    def _pool_held(self) -> frozenset[str]:
        return self.pool.held() if self.pool is not None else frozenset()

    async def _run_retention(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        retention = Retention(
            self.store,
            days=self.config.database.retention_days,
            checkpoints=CheckpointStore.beside(self.config.database.path),
        )
        await retention.run(task_status=task_status)

    def _client_runner(self, client: ChatClient) -> Any:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await client.run(self.router.address(), task_status=task_status)

        return run

    # --- dynamic children -----------------------------------------------------------------------

    async def _start_chat(
        self, chat: ChatRef, lobby_spoke_at: float | None
    ) -> trio.MemorySendChannel[ChatInbox]:
        client = self._clients_by_platform[chat.platform]

        async def start_session(
            session: Session,
            recovered: Recovered | None,
            attachments: tuple[Attachment, ...] = (),
            /,
        ) -> SessionHandle:
            return await self._start_session(
                session, chat, actor, flusher, client, recovered, attachments
            )

        async def hand_over(to: ChatRef, message: ChatInbox) -> None:
            await self.router.send(Deliver(to, message))

        budget = self._budgets.get(chat.platform)
        # The chat actor and its flusher address each other: the actor's inbox comes first.
        inbox = trio.open_memory_channel[ChatInbox](ChatActor.inbox_size)
        flusher = Flusher(
            client,
            chat,
            debounce=self.config.session.debounce_ms / 1000,
            notify=inbox[0].clone(),
            budget=budget.address() if budget is not None else None,
            spoken_at=lobby_spoke_at,
        )
        # The unit runs in the task of its child of `chats` and ends when the actor stops itself.
        stop_unit = trio.CancelScope()
        actor = ChatActor(
            chat,
            client=client,
            flusher=flusher.address(),
            store=self.store,
            config=self.config,
            start_session=start_session,
            access=client.access,
            directory=self.directory.address(),
            hand_over=hand_over,
            idle_after=float(self.config.session.chat_idle_minutes) * 60,
            inbox=inbox,
            on_stop=stop_unit.cancel,
        )
        unit = Supervisor(
            [
                flusher.spec("flusher", shutdown=CHAT_SHUTDOWN),
                # Transient: an actor that stopped itself (the chat went idle) is done.
                actor.spec("actor", restart=Restart.TRANSIENT),
            ],
            name=f"chat:{chat.key}",
        )
        address = actor.address()

        async def run_unit(
            *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            try:
                with stop_unit:
                    await unit.run(task_status=task_status)
            finally:
                # However the unit ends (idle, given up, the chats supervisor restarting), its
                # inbox closes, so the router sees at once that it must start a fresh one.
                actor.close()
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    self.router.address().send_nowait(ChatStopped(chat, address))

        spec = ChildSpec(
            f"chat:{chat.key}",
            run_unit,
            restart=Restart.TEMPORARY,
            shutdown=CHAT_SHUTDOWN + 2,
            kind="supervisor",
        )
        # A unit that just stopped (idle) may still be leaving its supervisor for a moment; its
        # successor waits for the name to be free rather than failing the event it carries.
        with trio.move_on_after(CHAT_RESTART_WAIT):
            while True:
                try:
                    await self.chats.start_child(spec)
                    return address
                except DuplicateChild:
                    await trio.sleep(0.01)
        raise DuplicateChild(spec.id)

    async def _start_session(
        self,
        session: Session,
        chat: ChatRef,
        chat_actor: ChatActor,
        flusher: Flusher,
        client: ChatClient,
        recovered: Recovered | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> SessionHandle:
        async def answer_press(press: ButtonPress, text: str) -> None:
            try:
                await client.answer_press(press, text)
            except AnycodeError as exc:
                log.warning("could not answer a button press: %s", exc)

        closed: trio.MemorySendChannel[SessionClosed] = chat_actor.address()
        actor = SessionActor(
            session,
            chat=chat,
            flusher=flusher.address(),
            closed=closed,
            store=self.store,
            provider=self.provider,
            config=self.config,
            answer_press=answer_press,
            recovered=recovered,
            publisher=self._publisher_for(session),
            download=client.download,
            attachments=attachments,
            pool=self.pool.address() if self.pool is not None else None,
        )
        spec = actor.spec(
            f"session:{short_id(session.id)}", restart=Restart.TEMPORARY, shutdown=SESSION_SHUTDOWN
        )
        await self.sessions.start_child(spec)
        handle = SessionHandle(session.id, session.user, actor.address())
        await self.directory.send(Register(handle))
        return handle

    def _publisher_for(self, session: Session) -> Publisher | None:
        """A publisher when the session's repository is on a forge the daemon has a token for
        (GitHub: `[github] token`; GitLab: `[gitlab] token`), whatever `[git] auto_pr` says:
        /pr and /diff use it too."""
        if not session.repo:
            return None
        git = self.config.git
        repo = parse_repo_ref(session.repo, forges_for(git))
        forge: Forge
        if repo is not None and repo.kind == "github" and self.config.github is not None:
            token = self.config.github.token.get_secret_value()
            forge = GitHubForge(git.github_api_url, token)
        elif repo is not None and repo.kind == "gitlab" and self.config.gitlab is not None:
            token = self.config.gitlab.token.get_secret_value()
            forge = GitLabForge(git.gitlab_api_url, token)
        else:
            return None
        return Publisher(
            session_id=session.id,
            repo=repo,
            forge=forge,
            credential=GitCredential.for_forge(repo.kind, token),
            mirrors=self._mirrors,
            work_root=git.cache_dir / "sessions",
            branch_prefix=git.branch_prefix,
            email_domain=git.email_domain,
            draft=git.draft,
            max_patch_bytes=git.max_patch_kb * 1024,
            prompt=session.prompt,
            requester=Requester(
                session.user_name or session.user, f"{session.platform}-{session.user}"
            ),
            within=float(git.timeout_secs),
        )

    # --- recovery -------------------------------------------------------------------------------

    async def _run_recovery(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Reattach sessions a previous run left running; fail the ones whose sandbox is gone."""
        for session in await self.store.active_sessions():
            await self._recover(session)
        task_status.started()

    async def _recover(self, session: Session) -> None:
        chat = ChatRef(session.platform, session.chat, session.thread)
        if chat.platform not in self._clients_by_platform:
            return  # that platform is not configured in this run; leave the session alone
        handle = None
        if session.status == SessionStatus.RUNNING and session.sandbox_id:
            try:
                handle = await self.provider.reattach(session.sandbox_id)
            except AnycodeError as exc:
                log.warning("session %s: cannot reattach: %s", short_id(session.id), exc)
        if handle is None and await self._restorable(session):
            # Its sandbox is gone, but a checkpoint can carry it into a new one: the session
            # actor does that first (actors/checkpoint.py).
            resume = await self._resume_point(session)
            await self.router.send(Deliver(chat, Reattach(session, Recovered(None, resume))))
            return
        if handle is None or not session.agent_session_id:
            if session.status != SessionStatus.RUNNING:
                reason = f"the daemon restarted while the session was {session.status}"
            elif not session.sandbox_id or handle is None:
                reason = "its sandbox was gone after the daemon restarted"
            else:
                reason = "the daemon restarted before the agent was connected"
            if await self.store.transition(session.id, SessionStatus.FAILED, reason=reason):
                await self.router.send(
                    Deliver(chat, Notice(f"Session `{short_id(session.id)}` failed: {reason}."))
                )
            # Its buttons answer "already answered" from now on, not a session nobody runs.
            await self.store.cancel_pending_interactions(session.id)
            await self._remove_sandboxes_of(session)
            return
        resume = await self._resume_point(session)
        await self.router.send(Deliver(chat, Reattach(session, Recovered(handle, resume))))

    async def _restorable(self, session: Session) -> bool:
        """Whether a running session whose sandbox is gone has a checkpoint to restore."""
        if session.status != SessionStatus.RUNNING or not session.agent_session_id:
            return False
        if self.config.session.checkpoint_max_mb <= 0:
            return False
        checkpoints = CheckpointStore.beside(self.config.database.path)
        return checkpoints.info(session.id) is not None

    async def _remove_sandboxes_of(self, session: Session) -> None:
        """Every sandbox labelled with the session, recorded or not: a daemon killed inside
        `create` never recorded the one it was making."""
        ids = {session.sandbox_id} if session.sandbox_id else set()
        try:
            ids |= {s.id for s in await self.provider.list() if s.session_id == session.id}
        except AnycodeError as exc:
            log.warning("session %s: could not list sandboxes: %s", short_id(session.id), exc)
        for sandbox_id in ids:
            try:
                await self.provider.destroy(sandbox_id)
            except AnycodeError as exc:
                log.warning("session %s: %s", short_id(session.id), exc)

    async def _resume_point(self, session: Session) -> Resume:
        cursor = None
        turn_running = True
        pending: dict[str, PermissionRequested] = {}
        for stored in await self.store.events(session.id):
            event = stored.event
            if event.cursor is not None:
                cursor = event.cursor
            if isinstance(event, UnknownEvent):
                # Written by a newer version, or damaged: nothing here depends on it.
                log.warning(
                    "session %s: event %d skipped: %s",
                    short_id(session.id),
                    event.seq,
                    event.reason,
                )
            elif isinstance(event, TurnEnded):
                turn_running = False
            elif isinstance(event, TextDelta | ToolCall | PermissionRequested):
                turn_running = True
            if isinstance(event, PermissionRequested):
                pending[event.key] = event
            elif isinstance(event, PermissionResolved):
                pending.pop(event.key, None)
        assert session.agent_session_id is not None
        return Resume(
            agent_session_id=session.agent_session_id,
            last_seq=session.last_event_seq,
            cursor=cursor,
            turn_running=turn_running,
            permissions=tuple(pending.values()),
        )


async def run_until_signalled(config: Config) -> int:
    """Run the daemon until SIGINT or SIGTERM, then shut down in order and return 0.

    Returns 1 with a plain message when the daemon cannot start (another one holds the admin
    socket, a chat token is refused, ...)."""
    try:
        daemon = Daemon(config)
    except ApiTokenMissing as missing:
        log.error("anycode could not start: %s", missing)
        return 1
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(daemon.run)
            except ChildStartFailed as failed:
                log.error("anycode could not start: %s", failed.error)
                nursery.cancel_scope.cancel()
                return 1
            except StoreUnavailable as failed:
                log.error("anycode could not start: %s", failed)
                nursery.cancel_scope.cancel()
                return 1
            log.info("anycode is running (daemon id %s)", daemon.daemon_id)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0
