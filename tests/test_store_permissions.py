"""The database and the files SQLite keeps beside it are readable by their owner only (0600),
whatever the umask, whether the files are new or left looser by an earlier run."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from anycode_actors.store import DB_FILE_MODE, Store

SIDE_FILES = ("-wal", "-shm")


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def files_of(db: Path) -> list[Path]:
    return [db, *(Path(f"{db}{suffix}") for suffix in SIDE_FILES)]


async def test_a_new_database_and_its_wal_and_shm_are_owner_only_even_under_umask_0(
    tmp_path: Path,
) -> None:
    db = tmp_path / "new" / "anycode.db"
    with umask(0):
        async with Store.open(db) as store:
            # A write, so the WAL and its index certainly exist while the store is open.
            await store.create_session(
                platform="telegram", chat="1", user="u", agent="a", prompt="p"
            )
            assert {str(f): mode(f) for f in files_of(db)} == {
                str(f): DB_FILE_MODE for f in files_of(db)
            }
    assert mode(db) == DB_FILE_MODE


def test_sqlite_gives_new_wal_and_shm_files_the_mode_of_the_database_file(tmp_path: Path) -> None:
    """What the store relies on: SQLite copies the database file's permissions to the -wal and
    -shm it creates (findCreateFileMode in
    https://github.com/sqlite/sqlite/blob/master/src/os_unix.c), whatever the umask."""
    for wanted in (0o640, 0o600):
        db = tmp_path / f"plain-{wanted:o}.db"
        os.close(os.open(db, os.O_RDWR | os.O_CREAT, wanted))
        os.chmod(db, wanted)
        with umask(0), closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            assert [mode(f) for f in files_of(db)] == [wanted] * 3


async def test_existing_looser_database_wal_and_shm_are_narrowed_at_open(tmp_path: Path) -> None:
    db = tmp_path / "anycode.db"
    async with Store.open(db) as store:
        session = await store.create_session(
            platform="telegram", chat="1", user="u", agent="a", prompt="p"
        )
    # An older version made the file 0644; another connection (a daemon that is still
    # stopping, or one killed mid-write) keeps its -wal and -shm, also 0644.
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("PRAGMA journal_mode = WAL")
        other.execute("UPDATE sessions SET prompt = 'q'")
        for path in files_of(db):
            os.chmod(path, 0o644)
        assert [mode(f) for f in files_of(db)] == [0o644] * 3
        async with Store.open(db) as store:
            assert [mode(f) for f in files_of(db)] == [DB_FILE_MODE] * 3
            reopened = await store.get_session(session.id)
            assert reopened is not None and reopened.prompt == "q"


async def test_a_mode_without_group_or_other_bits_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "anycode.db"
    async with Store.open(db):
        pass
    os.chmod(db, 0o700)  # odd, but nobody else can read it: the owner's choice stands
    async with Store.open(db):
        assert mode(db) == 0o700
