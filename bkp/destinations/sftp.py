"""An SFTP server off-site: paramiko preflight against the pinned host key, then restic's
sftp backend through the OpenSSH client with a generated known_hosts.

The preflight compares the server's host key with the pinned one before authenticating, so
a mismatch is refused before anything is written or any credential is offered.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import posixpath
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bkp import secrets
from bkp.destinations import Preflight, StoredObject, cache_options, snapshot_names
from bkp.errors import BkpError, OperationError, PolicyError, SafetyError
from bkp.policy import Destination, Policy
from bkp.restic import Repository

CONNECT_TIMEOUT = 20
# paramiko names RSA signature algorithms separately from the key type.
_KEY_TYPES = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}


def fingerprint(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ssh_config_text(alias: str, host: str, port: int, user: str, identity_file: Path,
                    known_hosts: Path) -> str:
    """OpenSSH client settings for restic: only the pinned key is trusted, never a prompt."""
    return "\n".join([
        f"Host {alias}",
        f"  HostName {host}",
        f"  Port {port}",
        f"  User {user}",
        f'  IdentityFile "{identity_file}"',
        "  IdentitiesOnly yes",
        f"  HostKeyAlias {alias}",
        f'  UserKnownHostsFile "{known_hosts}"',
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  PasswordAuthentication no",
        "  KbdInteractiveAuthentication no",
        f"  ConnectTimeout {CONNECT_TIMEOUT}",
        "  ServerAliveInterval 15",
        "  ServerAliveCountMax 4",
        "  LogLevel ERROR",
        "",
    ])


def load_identity(path: Path):
    """The private key of identity_file, or PolicyError naming what is wrong with it."""
    import warnings

    import paramiko
    import paramiko.pkey

    unknown_type = getattr(paramiko.pkey, "UnknownKeyType", ())
    secrets.check_private_file(path, "identity_file")
    try:
        with warnings.catch_warnings():  # e.g. cryptography's DSA deprecation, on stderr
            warnings.simplefilter("ignore")
            return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        pass
    except TypeError as exc:  # paramiko >= 4 says "password-protected" with a TypeError
        if "password" not in str(exc).lower():
            raise PolicyError(f"identity_file {path} cannot be read: {exc}") from None
    except unknown_type:
        raise PolicyError(f"identity_file {path} is a key of a type bkp does not use (DSA?): "
                          f"make an ed25519 key (ssh-keygen -t ed25519) and authorise it on "
                          f"the server") from None
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise PolicyError(f"identity_file {path} is not an SSH private key bkp can read "
                          f"({str(exc).split('. ')[0]})") from None
    raise PolicyError(f"identity_file {path} is passphrase protected: unattended backups need "
                      f"a key without one (ssh-keygen -p -N '' -f {path}, on a key used only "
                      f"by bkp)")


def connect(dest: Destination, setting: str = "destination"):
    """(transport, sftp client) of a session with `dest`'s server, authenticated with its
    identity_file only after the server proved to hold the pinned host key: on a mismatch
    nothing is sent, no credential offered (SafetyError). The caller closes the transport.
    `setting`: where `dest` is written (a policy's destination, bkp.yaml's results.inbox),
    for the operator who has to check its host_key."""
    import paramiko

    pinned_type, pinned_b64 = dest.host_key.split()[:2]
    try:
        sock = socket.create_connection((dest.host, dest.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise OperationError(
            f"cannot reach sftp destination {dest.host}:{dest.port}: "
            f"{exc.strerror or exc}; check the network and the server") from None
    transport = paramiko.Transport(sock)
    transport.get_security_options().key_types = _KEY_TYPES.get(pinned_type, [pinned_type])
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise OperationError(
            f"SSH handshake with {dest.host}:{dest.port} failed ({exc}); the "
            f"server may not offer a {pinned_type} host key") from None
    offered = transport.get_remote_server_key()
    if offered.get_name() != pinned_type or offered.get_base64() != pinned_b64:
        transport.close()
        raise SafetyError(
            f"host key mismatch for {dest.host}:{dest.port}: the server offers "
            f"{offered.get_name()} {fingerprint(offered.get_base64())}, {setting}.host_key "
            f"pins {pinned_type} {fingerprint(pinned_b64)}. Nothing was sent: the "
            f"connection was refused. Verify the server's key out of band before changing "
            f"{setting}.host_key")
    _authenticate(dest, transport, paramiko)
    return transport, paramiko.SFTPClient.from_transport(transport)


def _authenticate(dest: Destination, transport, paramiko) -> None:
    try:
        key = load_identity(Path(dest.identity_file))
    except BkpError:
        transport.close()
        raise
    try:
        transport.auth_publickey(dest.user, key)
    except (paramiko.SSHException, OSError, ValueError) as exc:
        transport.close()
        raise OperationError(
            f"the SSH server refused identity_file {dest.identity_file} for user "
            f"{dest.user} ({exc}); check authorized_keys on the server") from None


def list_folder(sftp, path: str) -> list[tuple[bytes, int]]:
    """(name as the server sent it, mode) of each entry of `path` but . and ..: paramiko's
    listdir_attr decodes every name as UTF-8 and fails on the first that is not, so one such
    name (anyone who may write to the folder can make one) would hide all the others."""
    from paramiko import SSHException
    from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR
    from paramiko.sftp_attr import SFTPAttributes

    kind, msg = sftp._request(CMD_OPENDIR, path)
    if kind != CMD_HANDLE:
        raise SSHException("the sftp server did not open the folder")
    handle = msg.get_binary()
    entries = []
    try:
        while True:
            try:
                kind, msg = sftp._request(CMD_READDIR, handle)
            except EOFError:  # the server's "no more entries"
                break
            if kind != CMD_NAME:
                raise SSHException("the sftp server did not list the folder")
            for _ in range(msg.get_int()):
                name = msg.get_string()
                msg.get_string()  # its `ls -l` line: owners' names as the server writes them
                mode = SFTPAttributes._from_msg(msg).st_mode or 0
                if name not in (b".", b".."):
                    entries.append((name, mode))
    finally:
        with contextlib.suppress(OSError, EOFError, SSHException):
            sftp._request(CMD_CLOSE, handle)
    return entries


def makedirs(sftp, path: str) -> None:
    """`path` and its parents on the server, each new folder 0700."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part)
        try:
            if not stat.S_ISDIR(sftp.stat(current).st_mode):
                raise OperationError(f"{current} on the sftp server is not a directory")
        except FileNotFoundError:
            sftp.mkdir(current, mode=0o700)


@dataclass
class SftpDestination:
    policy: Policy
    home: Path

    @property
    def dest(self):
        return self.policy.destination

    @property
    def alias(self) -> str:
        # A copy has its own alias and files: '.' never occurs in a tenant id.
        copy = f".copy-{self.policy.copy_id}" if self.policy.copy_id else ""
        return f"bkp-{self.policy.tenant}{copy}"

    @property
    def ssh_folder(self) -> Path:
        folder = self.home / "ssh" / self.policy.tenant
        return folder / f"copy-{self.policy.copy_id}" if self.policy.copy_id else folder

    @property
    def label(self) -> str:
        return f"sftp:{self.dest.user}@{self.dest.host}:{self.dest.port}{self.dest.path}"

    # -------------------------------------------------------------- paramiko side

    def preflight(self) -> Preflight:
        transport, sftp = connect(self.dest)
        try:
            try:
                sftp.stat(posixpath.join(self.dest.path, "config"))
                initialised = True
            except FileNotFoundError:
                initialised = False
        finally:
            transport.close()
        return Preflight(True, initialised)

    def nightly_preflight(self) -> Preflight:
        """No paramiko session at night: restic's OpenSSH client trusts only the pinned key
        (StrictHostKeyChecking=yes, our known_hosts) and refuses a changed one before it
        authenticates, so nothing is sent or written. That saves ~0.4 s per tenant;
        `bkp init`, drills and restores still run the full paramiko preflight."""
        return Preflight(True, None)

    def snapshot_ids(self) -> set[str] | None:
        """One paramiko session (~0.4 s): still less than a restic process, whose key
        derivation alone costs more."""
        try:
            transport, sftp = connect(self.dest)
        except BkpError:
            return None
        try:
            return snapshot_names(sftp.listdir(posixpath.join(self.dest.path, "snapshots")))
        except OSError:
            return None
        finally:
            transport.close()

    def prepare(self) -> None:
        transport, sftp = connect(self.dest)
        try:
            makedirs(sftp, self.dest.path)
        finally:
            transport.close()

    # -------------------------------------------------------------- restic side

    def _write_ssh_files(self) -> Path:
        """restic's ssh_config and known_hosts under BKP_HOME; left as they are when they
        already say the same (a read writes nothing), and in a private temporary folder
        where BKP_HOME cannot be written (a read from a read-only BKP_HOME)."""
        folder = self.ssh_folder
        key_type, key_b64 = self.dest.host_key.split()[:2]
        try:
            return self._ssh_files_in(folder, f"{self.alias} {key_type} {key_b64}\n")
        except OSError:
            spare = Path(tempfile.mkdtemp(prefix="bkp-ssh-"))
            atexit.register(shutil.rmtree, spare, True)
            return self._ssh_files_in(spare, f"{self.alias} {key_type} {key_b64}\n")

    def _ssh_files_in(self, folder: Path, known_hosts_line: str) -> Path:
        known_hosts = folder / "known_hosts"
        config = folder / "ssh_config"
        wanted = {known_hosts: known_hosts_line,
                  config: ssh_config_text(self.alias, self.dest.host, self.dest.port,
                                          self.dest.user, Path(self.dest.identity_file),
                                          known_hosts)}
        for path, text in wanted.items():
            if not _holds(path, text):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.write_text(text)
                path.chmod(0o600)
        return config

    def repository(self) -> Repository:
        config = self._write_ssh_files()
        if any(c in str(config) for c in ' ,"\''):
            # restic reads --option values as CSV and splits the command on blanks.
            raise PolicyError(f"BKP_HOME {self.home} must not contain blanks, commas or "
                              f"quotes when an sftp destination is used")
        command = f"ssh -F {config} {self.alias} -s sftp"
        return Repository(
            url=f"sftp:{self.alias}:{self.dest.path}",
            options=(f"sftp.command={command}",),
            env=secrets.restic_password(self.policy),
            **cache_options(self.home, self.policy.tenant),
            label=self.label,
        )

    def rclone_repository(self, remote: str) -> Repository:
        """The same repository through restic's rclone backend, as the named remote `remote`
        defined only in restic's environment: for `restic copy` between two sftp servers,
        where one sftp.command would serve both. rclone checks the pinned host key against
        its own known_hosts file; the paramiko preflight has checked it first."""
        known_hosts = self._rclone_known_hosts()
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        env = {"RCLONE_CONFIG": "", f"{prefix}TYPE": "sftp", f"{prefix}HOST": self.dest.host,
               f"{prefix}PORT": str(self.dest.port), f"{prefix}USER": self.dest.user,
               f"{prefix}KEY_FILE": str(self.dest.identity_file),
               f"{prefix}KNOWN_HOSTS_FILE": str(known_hosts),
               # no shell commands on the server: restic needs only files
               f"{prefix}SHELL_TYPE": "none", f"{prefix}MD5SUM_COMMAND": "none",
               f"{prefix}SHA1SUM_COMMAND": "none"}
        return Repository(url=f"rclone:{remote}:{self.dest.path}",
                          env=secrets.restic_password(self.policy).merged(secrets.SecretEnv(env)),
                          **cache_options(self.home, self.policy.tenant), label=self.label)

    def _rclone_known_hosts(self) -> Path:
        """known_hosts as rclone (Go's knownhosts) looks it up: by [host]:port."""
        key_type, key_b64 = self.dest.host_key.split()[:2]
        host = self.dest.host.strip("[]")
        name = host if self.dest.port == 22 and ":" not in host else f"[{host}]:{self.dest.port}"
        self._write_ssh_files()
        path = self.ssh_folder / "known_hosts.rclone"
        text = f"{name} {key_type} {key_b64}\n"
        if not _holds(path, text):
            path.write_text(text)
            path.chmod(0o600)
        return path

    def confirm_unchanged(self) -> None:
        """Nothing to do: a repository on a server cannot be swapped under a running restic
        without restic noticing."""

    def observed(self) -> dict:
        """What a run that got through saw: SSH to this host, which proved it holds the
        pinned key (OpenSSH with StrictHostKeyChecking=yes and a known_hosts holding only
        that key refuses any other before anything is sent)."""
        key_type, key_b64 = self.dest.host_key.split()[:2]
        return {"type": "sftp", "off_site": True, "transport": "ssh",
                "host": self.dest.host, "port": self.dest.port,
                "host_key": f"{key_type} {fingerprint(key_b64)}",
                "host_key_enforced": True}

    def usage_bytes(self) -> int | None:
        return None

    # -------------------------------------------------------------- erasure (paramiko)

    def stored_objects(self) -> list[StoredObject]:
        transport, sftp = connect(self.dest)
        try:
            return [stored for stored, _ in self._walk(sftp)]
        finally:
            transport.close()

    def remove_keys(self) -> list[StoredObject]:
        transport, sftp = connect(self.dest)
        try:
            keys = [stored for stored, _ in self._walk(sftp) if stored.is_key]
            for key in keys:
                self._remove(sftp, key)
            return keys
        finally:
            transport.close()

    def remove_objects(self) -> list[StoredObject]:
        transport, sftp = connect(self.dest)
        try:
            removed, folders = [], set()
            for stored, folder in self._walk(sftp):
                self._remove(sftp, stored)
                removed.append(stored)
                folders.add(folder)
            folders |= set(self._folders(sftp))
            # Deepest first, the location's own folder last; a folder that stays (the
            # server's rules) holds nothing.
            for folder in [*sorted(folders, key=lambda f: f.count("/"), reverse=True),
                           self.dest.path]:
                with contextlib.suppress(OSError):
                    sftp.rmdir(folder)
            return removed
        except OSError as exc:
            raise OperationError(f"sftp erasure at {self.label} failed: {exc}") from None
        finally:
            transport.close()

    def _remove(self, sftp, stored: StoredObject) -> None:
        path = posixpath.join(self.dest.path, stored.name)
        try:
            sftp.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OperationError(f"cannot remove {path} on {self.dest.host}: "
                                 f"{exc.strerror or exc}") from None

    def _walk(self, sftp, folder: str | None = None):
        """(object, its folder) for every file below the location; nothing when it is gone."""
        folder = folder or self.dest.path
        try:
            entries = sftp.listdir_attr(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OperationError(f"cannot list {folder} on {self.dest.host}: "
                                 f"{exc.strerror or exc}") from None
        for entry in sorted(entries, key=lambda e: e.filename):
            path = posixpath.join(folder, entry.filename)
            if stat.S_ISLNK(entry.st_mode or 0):
                # Removing the link leaves what it points at (data/ moved to a bigger
                # disk): "nothing left" would be false. Following it could reach anything.
                raise OperationError(
                    f"{path} on {self.dest.host} is a symbolic link: bkp lists and erases "
                    f"only what lies in the repository's own folder; move what it points at "
                    f"back into {path}, then re-run")
            if stat.S_ISDIR(entry.st_mode or 0):
                yield from self._walk(sftp, path)
            else:
                yield (StoredObject(posixpath.relpath(path, self.dest.path),
                                    entry.st_size or 0), folder)

    def _folders(self, sftp, folder: str | None = None) -> list[str]:
        folder = folder or self.dest.path
        try:
            entries = sftp.listdir_attr(folder)
        except OSError:
            return []
        found = []
        for entry in entries:
            if stat.S_ISDIR(entry.st_mode or 0):
                path = posixpath.join(folder, entry.filename)
                found += [path, *self._folders(sftp, path)]
        return found

    def erasure_blocked_until(self) -> str | None:
        return None


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False
