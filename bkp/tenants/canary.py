"""Immutability proven, not assumed: every drill of an append-only or object-locked
destination tries to delete a harmless canary with the nightly credential.

The canary is a tiny snapshot bkp writes once and reuses (restic.CANARY_TAG, no tenant tag,
no tenant data). Never a lock file: locks are deletable even on an append-only server. The
attempt is what a thief of the nightly credential would do:
- on a REST server, a DELETE of the canary's snapshot file (what `restic forget` sends),
  judged by the status: only 403 (405) is a refusal, a 500 or a timeout proves nothing;
- on S3 with Object Lock, a DeleteObject of the canary's snapshot object *with its version
  id*: a delete without one "succeeds" by adding a delete marker and removes nothing.
Afterwards bkp looks whether the canary is still there: that, not an exit code, is the
verdict. A deletion that went through fails the drill (exit 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bkp.destinations import destination_for
from bkp.errors import OperationError
from bkp.policy import Policy
from bkp.restic import Restic
from bkp.settings import snapshot_host

REFUSED = "refused"
SUCCEEDED = "succeeded"

DELETABLE = ("the backups are deletable by the nightly credential: {how} deleted the "
             "canary snapshot {canary}. The destination is not append-only for this "
             "credential; see runbooks/append-only-server.md")


@dataclass(frozen=True)
class Immutability:
    canary: str  # the canary snapshot's id
    method: str  # how the deletion was tried
    deletion: str  # refused | succeeded
    detail: str
    written: bool  # this drill wrote the canary (the first drill, or one after a deletion)

    def to_json(self) -> dict:
        return {"canary": self.canary, "method": self.method, "deletion": self.deletion,
                "detail": self.detail, "canary_written": self.written}

    @property
    def proven(self) -> bool:
        return self.deletion == REFUSED

    def problem_text(self) -> str:
        return DELETABLE.format(how=self.method, canary=self.canary[:8])


def prove_immutability(policy: Policy, home: Path, restic: Restic) -> Immutability:
    canary, written = _canary(restic)
    destination = destination_for(policy, home)
    if policy.destination.type == "s3":
        refused, detail = destination.try_delete_snapshot_version(canary)
        method = "DeleteObject with the version id"
    else:
        refused, detail = destination.try_delete_snapshot(canary)
        method = "DELETE of the snapshot file"
    still_there = any(s["id"] == canary for s in restic.canaries())
    if not still_there:
        return Immutability(canary, method, SUCCEEDED, detail, written)
    if not refused:
        # Neither deleted nor refused (the server failed otherwise): nothing proven.
        raise OperationError(f"could not prove that the nightly credential cannot delete: "
                             f"the deletion of canary {canary[:8]} neither went through nor "
                             f"was refused ({detail}); run the drill again")
    return Immutability(canary, method, REFUSED, detail, written)


def _canary(restic: Restic) -> tuple[str, bool]:
    """The canary already in the repository (the oldest, if an earlier drill was cut short
    after writing one), or a new one."""
    found = sorted(restic.canaries(), key=lambda s: s["time"] or "")
    if found:
        return found[0]["id"], False
    # The host every snapshot of this installation records (BKP_SNAPSHOT_HOST: in a pod the
    # machine's name changes every run). Harmless to share with the tenant's own snapshots:
    # bkp selects by tags, never by host, and the canary's one path (stdin) is never a
    # parent of a backup. It still carries no tenant tag, so no tenant command finds it.
    short = restic.write_canary(snapshot_host())
    found = [s for s in restic.canaries() if s["id"].startswith(short)]
    if not found:
        raise OperationError(f"the canary snapshot {short} just written is not listed")
    return found[0]["id"], True
