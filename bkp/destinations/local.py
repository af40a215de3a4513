"""A repository on a local or mounted disk (staging; not off-site)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bkp import secrets
from bkp.destinations import Preflight, StoredObject, cache_options, snapshot_names
from bkp.errors import OperationError
from bkp.policy import Policy
from bkp.restic import Repository


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file this is (device, inode): the same path on another filesystem is not it."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


@dataclass
class LocalDestination:
    policy: Policy
    home: Path
    # The repository's config as the nightly preflight found it.
    found: tuple[int, int] | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> Path:
        return Path(self.policy.destination.path)

    @property
    def label(self) -> str:
        return str(self.path)

    def preflight(self) -> Preflight:
        initialised = (self.path / "config").is_file()
        reachable = initialised or self.path.parent.is_dir()
        detail = "" if reachable else f"{self.path.parent} does not exist (disk not mounted?)"
        return Preflight(reachable, initialised, detail)

    def nightly_preflight(self) -> Preflight:
        found = self.preflight()
        if found.initialised and _read_only(self.path):
            # restic 0.14 would retry writing its lock for minutes before saying why.
            raise OperationError(f"destination {self.path} is on a read-only filesystem: the "
                                 f"backup disk is mounted read-only; remount it read-write, "
                                 f"then re-run")
        if found.initialised:
            self.found = _identity(self.path / "config")
        return found

    def confirm_unchanged(self) -> None:
        # restic re-creates the folders it misses: when the backup disk is unmounted under
        # it, it writes the rest of the snapshot into the bare mount point, beside no config
        # and no keys, and exits 0.
        if self.found is not None and _identity(self.path / "config") != self.found:
            raise OperationError(
                f"the repository at {self.path} went away during the backup (backup disk "
                f"unmounted or replaced?): the snapshot is not in it. What restic wrote "
                f"afterwards lies in {self.path} outside the repository; remove that, mount "
                f"the backup disk, then re-run")

    def prepare(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def repository(self) -> Repository:
        return Repository(url=str(self.path), env=secrets.restic_password(self.policy),
                          **cache_options(self.home, self.policy.tenant),
                          label=str(self.path))

    def observed(self) -> dict:
        """What a run saw of where its data went: a path on this host, no network."""
        return {"type": "local", "off_site": False, "transport": "none",
                "location": str(self.path)}

    def snapshot_ids(self) -> set[str] | None:
        try:
            return snapshot_names(os.listdir(self.path / "snapshots"))
        except OSError:
            return None

    def usage_bytes(self) -> int | None:
        if not self.path.is_dir():
            return None
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    # -------------------------------------------------------------- erasure

    def stored_objects(self) -> list[StoredObject]:
        """Every file below the repository's folder; none when it is gone. A link is refused."""
        if not self.path.exists():
            return []
        found = []

        def refused(error: OSError) -> None:
            raise OperationError(f"cannot read {error.filename}: {error.strerror}")

        for root, dirs, files in os.walk(self.path, onerror=refused):
            for name in dirs:
                # os.walk does not follow a linked folder: what lies behind it (restic's
                # data/ moved to a bigger disk) would stay while the erasure said "nothing
                # left". Following it could reach anything; the operator decides.
                if os.path.islink(os.path.join(root, name)):
                    link = os.path.join(root, name)
                    raise OperationError(
                        f"{link} is a link to the folder {os.path.realpath(link)}: bkp "
                        f"lists and erases only what lies in the repository's own folder; "
                        f"move that folder's content back into {link} (or point the "
                        f"policy at it), then re-run")
            for name in files:
                full = os.path.join(root, name)
                if os.path.islink(full):  # unlinked, what it points at would stay
                    raise OperationError(
                        f"{full} is a link to {os.path.realpath(full)}: bkp lists and erases "
                        f"only what lies in the repository's own folder; move the file back "
                        f"in its place, then re-run")
                try:
                    size = os.lstat(full).st_size
                except FileNotFoundError:
                    continue
                found.append(StoredObject(os.path.relpath(full, self.path), size))
        return sorted(found, key=lambda o: o.name)

    def remove_keys(self) -> list[StoredObject]:
        keys = [o for o in self.stored_objects() if o.is_key]
        for key in keys:
            self._unlink(key)
        return keys

    def remove_objects(self) -> list[StoredObject]:
        removed = []
        for stored in self.stored_objects():
            self._unlink(stored)
            removed.append(stored)
        # The folders too, deepest first; the location's own folder last.
        for root, dirs, _files in os.walk(self.path, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
        return removed

    def _unlink(self, stored: StoredObject) -> None:
        try:
            os.unlink(self.path / stored.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OperationError(f"cannot remove {self.path / stored.name}: "
                                 f"{exc.strerror}") from None

    def erasure_blocked_until(self) -> str | None:
        return None
