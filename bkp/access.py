"""Who may act: the person behind the OS identity, and what their role allows.

bkp used to record whatever name `--operator` gave. With `operators` in bkp.yaml the actor
is derived from the operating system instead: the login uid the kernel keeps for the whole
session (it survives `sudo` and `su`, and only root can set it, once, at login), then
`SUDO_USER`, then the effective user. That OS identity is mapped to the registered person;
`--operator` may only narrow it (a shared admin account naming which of its people acts)
or drop every right (a label such as `scheduler` that names no registered person). It can
never name another registered person. Without an operators list bkp works as before and
`bkp status` says so.
"""

from __future__ import annotations

import os
import pwd
import unicodedata
from dataclasses import dataclass

from bkp.errors import SafetyError
from bkp.names import shown

ROLES = ("operator", "validator", "auditor", "admin")
NO_LOGIN_UID = 4294967295  # (uid_t)-1: the kernel's "no login session"

# What each act needs. An act not named here changes records but destroys nothing
# (backup, drill, restore, init, media register, catalog sync, evidence backup): every
# identity except a read-only auditor may do it, registered or not, so cron keeps working.
ALLOWED: dict[str, frozenset[str]] = {
    "sanitize": frozenset({"operator", "admin"}),
    "destroy": frozenset({"operator", "admin"}),
    "offboard": frozenset({"operator", "admin"}),
    "erase": frozenset({"operator", "admin"}),
    "restic-write": frozenset({"operator", "admin"}),
    "evidence-recover-force": frozenset({"admin"}),
    "signing-key": frozenset({"admin"}),
    "policy-acknowledge": frozenset({"admin"}),
    "validate": frozenset({"validator", "admin"}),
    "approve": frozenset({"operator", "validator", "admin"}),
}
DESCRIBED = {
    "sanitize": "sanitizing a medium", "destroy": "recording a destruction",
    "offboard": "offboarding a tenant", "erase": "erasing snapshots",
    "restic-write": "restic commands that change the repository",
    "evidence-recover-force": "overwriting records with `evidence recover --force`",
    "signing-key": "creating or rotating the signing key",
    "policy-acknowledge": "acknowledging a weakened policy",
    "validate": "validating a sanitization", "approve": "approving a request",
}


@dataclass(frozen=True)
class Operator:
    """A registered person (bkp.yaml `operators`)."""

    name: str
    os_users: tuple[str, ...]
    role: str
    ssh_key: str
    title: str | None = None
    contact: str | None = None

    def as_json(self) -> dict:
        return {"name": self.name, "os_users": list(self.os_users), "role": self.role,
                "title": self.title, "contact": self.contact}


@dataclass(frozen=True)
class Actor:
    """Who is acting: the OS identity, and the registered person it maps to (if any)."""

    os_user: str  # the login identity: the person's own account, not the `root` of sudo
    via: str  # how it was found: "login uid", "SUDO_USER" or "effective uid"
    operator: str  # the name recorded on every event
    registered: bool  # `operator` is a registered person, proven by the OS identity
    role: str | None = None
    controlled: bool = False  # operators are registered: roles apply
    note: str | None = None  # why this identity has no role (shown when refused)

    def as_json(self) -> dict:
        return {"os_user": self.os_user, "via": self.via, "operator": self.operator,
                "registered": self.registered, "role": self.role}


def login_identity() -> tuple[str, str]:
    """(user name, how it was found). The login uid first: sudo cannot change it."""
    uid = _login_uid()
    if uid is not None:
        return user_name(uid), "login uid"
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        return sudo_user, "SUDO_USER"
    return user_name(os.geteuid()), "effective uid"


def _login_uid() -> int | None:
    try:
        with open("/proc/self/loginuid") as file:
            uid = int(file.read().strip())
    except (OSError, ValueError):
        return None
    return None if uid == NO_LOGIN_UID else uid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def name_key(name: str) -> str:
    """A name as a reader of the trail sees it: case, spaces, invisible formatting
    characters (a zero-width space) and compatibility forms (a fullwidth A, a no-break
    space) make no person different. Two names with one key are one person to a reader."""
    folded = unicodedata.normalize("NFKC", name)
    visible = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return "".join(visible.casefold().split()).translate(LOOKALIKES)


# Cyrillic and Greek letters that print as Latin ones (after casefold): "Jеroen" with a
# Cyrillic е is Jeroen to anyone reading a certificate.
LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j",
    "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "һ": "h", "ɡ": "g",
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "u",
    "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
})


def resolve_actor(operators: tuple[Operator, ...], given: str | None,
                  default_name: str) -> Actor:
    """The actor for this process. `given` is what --operator / BKP_OPERATOR said (None
    when neither was set); `default_name` is the name recorded when nothing is registered.
    SafetyError when `given` names a registered person this OS identity is not."""
    os_user, via = login_identity()
    if not operators:
        return Actor(os_user, via, given or default_name, registered=False)
    candidates = [o for o in operators if os_user in o.os_users]
    by_name = {name_key(o.name): o for o in operators}
    if given is not None and name_key(given) in by_name:
        # A label that reads as a registered person's name is that person: a reader of
        # the trail cannot tell "alice  jansen" from Alice Jansen.
        person = by_name[name_key(given)]
        if person not in candidates:
            raise SafetyError(
                f"--operator {shown(given)} reads as {person.name}: you are logged in as "
                f"OS user {os_user} (found by {via}), which is not registered to "
                f"{person.name} in bkp.yaml; --operator may "
                f"only name a person registered for this account"
                + (f" ({', '.join(o.name for o in candidates)})" if candidates else ""))
        return _registered(os_user, via, person)
    if given is not None:
        return Actor(os_user, via, given, registered=False, controlled=True,
                     note=f"{given} is not a registered operator: it acts without a role")
    if len(candidates) == 1:
        return _registered(os_user, via, candidates[0])
    if candidates:
        names = ", ".join(o.name for o in candidates)
        return Actor(os_user, via, os_user, registered=False, controlled=True,
                     note=f"OS user {os_user} is shared by {names}: name yourself with "
                          f"--operator")
    return Actor(os_user, via, os_user, registered=False, controlled=True,
                 note=f"OS user {os_user} is not registered to any operator in bkp.yaml")


def _registered(os_user: str, via: str, person: Operator) -> Actor:
    return Actor(os_user, via, person.name, registered=True, role=person.role,
                 controlled=True)


def authorize(actor: Actor, act: str | None) -> None:
    """SafetyError (exit 4) when `act` is not allowed to this actor. `act` None: a command
    that changes records but destroys nothing."""
    if not actor.controlled:
        return
    allowed = ALLOWED.get(act) if act else None
    if allowed is None:
        if actor.role == "auditor":
            raise SafetyError(f"{actor.operator} is registered as an auditor: auditors "
                              f"read and check, they do not act")
        return
    if actor.registered and actor.role in allowed:
        return
    roles = " or ".join(sorted(allowed))
    who = (f"{actor.operator} (OS user {actor.os_user}) is registered as {actor.role}"
           if actor.registered else actor.note or f"{actor.operator} is not registered")
    raise SafetyError(f"{DESCRIBED.get(act, act)} needs a registered {roles}: {who}")
