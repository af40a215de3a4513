"""Kubernetes manifests: one CronJob per tenant and task, and the central gatherer.

Pure functions: policies and the installation's `kubernetes` settings in, plain mappings out
(the CLI writes them as YAML). A pod keeps no state: BKP_HOME is an emptyDir, the policy comes
from a ConfigMap, the secrets are files of the tenant's own Secret (the manifest names the
Secret and its keys, never a value), the sources are mounted read-only at the paths the policy
names. A tenant the cluster cannot run as its policy says gets no CronJob and a problem (exit
3), like an invalid policy in `bkp run`.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from bkp.installation import Cluster, ClusterTenant
from bkp.policy import Policy

# Inside every pod: one directory of bkp's own, so no path a policy names can collide with it.
POD_ROOT = "/run/bkp"
POD_POLICIES = f"{POD_ROOT}/policies"
POD_CONFIG_DIR = f"{POD_ROOT}/config"
POD_HOME = f"{POD_ROOT}/home"
POD_TMP = f"{POD_ROOT}/tmp"
CONTAINER = "bkp"
LABEL_PREFIX = "bkp.example.eu"

# Keys of a policy (at any depth: destination, copies, databases) naming a file the pod needs
# from the tenant's Secret. The deleting credential of an append-only destination is in a
# Secret of its own that only the maintenance job mounts: a nightly pod never holds it.
SECRET_FILE_KEYS = ("password_file", "credentials_file", "identity_file", "ca_file")
MAINTENANCE_FILE_KEYS = ("maintenance_credentials_file",)

# Failures that another try cannot mend: usage (2), policy (3), safety (4), verification (5).
# Kubernetes retries only exit 1 (an operation that failed, e.g. the network) and evictions.
FINAL_EXIT_CODES = (2, 3, 4, 5)
BACKOFF_LIMIT = 2
TTL_AFTER_FINISHED = 7 * 24 * 3600  # a failed Friday night is still there on Monday
STARTING_DEADLINE = 3600  # a cluster back within the hour still starts the night's job
DEADLINE_MARGIN = 15 * 60  # after restic's own timeout: time for bkp to record the failure
GATHER_DEADLINE = 4 * 3600
MAINTENANCE_WINDOW = (10 * 60, 16 * 60)  # Sundays, by day: never in the nightly window
CONFIGMAP_BYTES = 900_000  # of the 1 MiB an object may have in etcd, with room for metadata
NAME_LIMITS = {"CronJob": 52, "ConfigMap": 253, "Secret": 253, "label": 63}

RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
             "limits": {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "20Gi"}}
GATHER_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"},
                    "limits": {"cpu": "2", "memory": "2Gi"}}

# What root may do in each task, beyond nothing. Non-root pods keep no capability at all.
ROOT_CAPABILITIES = {
    "backup": ["DAC_READ_SEARCH"],  # read every tenant file whatever its owner and mode
    # the drill restores owners and modes into scratch space and compares with the source
    "drill": ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER"],
    "maintain": [],
    "gather": [],
}


@dataclass(frozen=True)
class Options:
    image: str
    namespace: str
    spread: tuple[int, int] | None = None  # minutes after midnight: start, end
    time_zone: str | None = None
    config_text: str | None = None  # bkp.yaml, when the installation has one
    gather_schedule: str = "30 6 * * *"
    results: object = None  # installation.Results: jobs leave signed results in its inbox
    inbox_volume: dict | None = None  # kubernetes.inbox: a shared-directory inbox's volume
    result_keys: dict = field(default_factory=dict)  # tenant -> public key text (gatherer)


@dataclass(frozen=True)
class SecretFile:
    path: str  # where the policy names it, and where the pod sees it
    key: str  # the key in the Secret


@dataclass(frozen=True)
class TenantPlan:
    """What the cluster needs of one tenant, checked: everything a CronJob is built from."""

    policy: Policy
    setup: ClusterTenant
    run_as_user: int
    secret: str
    files: tuple[SecretFile, ...]
    maintenance_secret: str | None
    maintenance_files: tuple[SecretFile, ...]
    sources: tuple[tuple[str, str], ...]  # (policy path, sub-path in the volume)
    configmap: str = ""


@dataclass
class Rendering:
    manifests: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (tenant, message)
    secrets: list[tuple[str, str, tuple[SecretFile, ...]]] = field(default_factory=list)


# ---------------------------------------------------------------- names

def k8s_name(text: str, limit: int) -> str:
    """A DNS-1123 name of at most `limit` characters: as it is when it fits, else cut, with
    a hash of the whole, so two long tenant ids never get one name."""
    clean = text.strip("-")
    if clean == text and len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{clean[: limit - 9].rstrip('-')}-{digest}"


def label_value(tenant: str) -> str:
    return k8s_name(tenant, NAME_LIMITS["label"])


def cronjob_name(task: str, tenant: str) -> str:
    return k8s_name(f"bkp-{task}-{tenant}", NAME_LIMITS["CronJob"])


def secret_name(tenant: str, maintenance: bool = False) -> str:
    suffix = "-maintenance" if maintenance else ""
    return k8s_name(f"bkp-{tenant}{suffix}", NAME_LIMITS["Secret"])


def _tenant_hash(tenant: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}{tenant}".encode()).digest()[:8], "big")


# ---------------------------------------------------------------- schedules

PLAIN_DAILY = re.compile(r"(\d{1,2}) (\d{1,2}) \* \* \*")


def parse_window(text: str) -> tuple[int, int] | None:
    """`HH:MM-HH:MM` as minutes after midnight; None when it is not one. The window may
    cross midnight (22:00-04:00); it cannot be empty."""
    match = re.fullmatch(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})", text.strip())
    if not match:
        return None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        return None
    return h1 * 60 + m1, h2 * 60 + m2


def spread_schedule(expression: str, tenant: str, window: tuple[int, int] | None) -> str:
    """A plain daily time (`M H * * *`) moved to the tenant's own minute of the window (a
    hash of the tenant id: the same every time it is rendered); anything else as written."""
    if window is None or not PLAIN_DAILY.fullmatch(" ".join(expression.split())):
        return expression
    start, end = window
    length = (end - start) % 1440
    minute = (start + _tenant_hash(tenant) % length) % 1440
    return f"{minute % 60} {minute // 60} * * *"


def maintenance_schedule(tenant: str) -> str:
    start, end = MAINTENANCE_WINDOW
    minute = start + _tenant_hash(tenant, "maintain") % (end - start)
    return f"{minute % 60} {minute // 60} * * 0"


# ---------------------------------------------------------------- one tenant, checked

def _named_files(document, keys: tuple[str, ...]) -> Iterator[str]:
    """Every value of one of `keys`, at any depth of the policy as written."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from _named_files(value, keys)
    elif isinstance(document, list):
        for item in document:
            yield from _named_files(item, keys)


def _secret_files(paths: list[str]) -> tuple[SecretFile, ...]:
    """Keys are the files' names, as `kubectl create secret --from-file=PATH` makes them;
    a name taken twice gets -2, -3 (the manifest and the kubectl line say which)."""
    files, taken = [], set()
    for path in dict.fromkeys(paths):
        base = re.sub(r"[^-._a-zA-Z0-9]", "_", posixpath.basename(path)) or "file"
        key, n = base, 1
        while key in taken:
            n += 1
            key = f"{base}-{n}"
        taken.add(key)
        files.append(SecretFile(path, key))
    return tuple(files)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _normal(path: str) -> str:
    return posixpath.normpath(path)


def plan_tenant(policy: Policy, cluster: Cluster, results=None) -> TenantPlan | str:
    """The tenant's plan, or why the cluster cannot run it as its policy says."""
    import json

    tenant = policy.tenant
    if policy.password_command or policy.password_env:
        how = "password_command" if policy.password_command else "password_env"
        return (f"takes its repository password from {how}, which a pod does not have: use "
                f"password_file (mounted from the tenant's Secret)")
    setup = cluster.tenants.get(tenant)
    if setup is None:
        return (f"has no source volume: add kubernetes.tenants.{tenant}.sources to bkp.yaml "
                f"(e.g. {{nfs: {{server: ..., path: ...}}}} or {{persistentVolumeClaim: "
                f"{{claimName: ...}}}})")
    socket = next((d for d in policy.databases if d.socket), None)
    if socket is not None:
        return (f"reaches {socket.label} through the socket {socket.host}, which is not in a "
                f"pod: give the database's host name (with sslmode verify-full)")
    document = json.loads(policy.document or "{}")
    nightly = [_normal(p) for p in _named_files(document, SECRET_FILE_KEYS)]
    if results is not None:
        key = results.private_key(tenant)
        if not key.exists():
            return (f"has no result key {key} to sign its jobs' results with: run `bkp "
                    f"catalog result-keys {tenant}`")
        nightly.append(_normal(str(key)))
        nightly += [_normal(str(path)) for path in inbox_secret_files(results.inbox)]
    deleting = [_normal(p) for p in _named_files(document, MAINTENANCE_FILE_KEYS)]
    sources = _mounted_sources([_normal(s) for s in policy.sources], setup)
    if isinstance(sources, str):
        return sources
    repository = _normal(policy.destination.path) if policy.destination.type == "local" else None
    if repository and setup.repository is None:
        return (f"backs up to a local destination ({repository}): add "
                f"kubernetes.tenants.{tenant}.repository (the volume it is on) to bkp.yaml")
    collision = _collision([*nightly, *deleting], [s for s, _ in sources], repository)
    if collision:
        return collision
    return TenantPlan(
        policy=policy, setup=setup,
        run_as_user=setup.run_as_user if setup.run_as_user is not None else cluster.run_as_user,
        secret=secret_name(tenant), files=_secret_files(nightly),
        maintenance_secret=secret_name(tenant, True) if deleting else None,
        maintenance_files=_secret_files(deleting), sources=sources)


def inbox_secret_files(inbox) -> list:
    """The files every job and the gatherer need to reach the results inbox: an s3 inbox's
    credentials, an sftp inbox's SSH key; mounted from each tenant's Secret like its own."""
    if inbox.type == "s3":
        return [inbox.credentials_file]
    if inbox.type == "sftp":
        return [inbox.identity_file]
    return []  # a shared directory: a volume (kubernetes.inbox)


def _mounted_sources(sources: list[str], setup: ClusterTenant
                     ) -> tuple[tuple[str, str], ...] | str:
    """(mount path, sub-path in the volume) per source; a source inside another is in its
    mount already."""
    root = _normal(setup.sources_root) if setup.sources_root else (
        posixpath.commonpath(sources) if sources else "/")
    outside = [s for s in sources if not _inside(s, root)]
    if outside:
        return (f"names source {outside[0]} outside kubernetes.tenants sources_root {root}: "
                f"the volume holds what is below sources_root only")
    outer = [s for s in sources if not any(o != s and _inside(s, o) for o in sources)]
    return tuple((s, posixpath.relpath(s, root) if s != root else "")
                 for s in dict.fromkeys(outer))


def _collision(files: list[str], sources: list[str], repository: str | None) -> str | None:
    for path in [*files, *sources, *([repository] if repository else [])]:
        if _inside(path, POD_ROOT) or _inside(POD_ROOT, path):
            return f"names {path}, where the pod keeps bkp's own files ({POD_ROOT})"
    for path in files:
        inside = next((s for s in sources if _inside(path, s)), None)
        if inside:
            return (f"keeps the secret file {path} inside its source {inside}: a secret "
                    f"cannot be mounted into a read-only source, and would be backed up")
    if repository:
        inside = next((s for s in sources if _inside(repository, s) or _inside(s, repository)),
                      None)
        if inside:
            return f"keeps its local repository {repository} and source {inside} in one another"
    return None


# ---------------------------------------------------------------- the objects

def _labels(component: str, tenant: str | None = None) -> dict:
    labels = {"app.kubernetes.io/name": "bkp", "app.kubernetes.io/component": component}
    if tenant:
        labels[f"{LABEL_PREFIX}/tenant"] = label_value(tenant)
    return labels


def _metadata(name: str, options: Options, component: str, tenant: str | None = None) -> dict:
    meta = {"name": name, "namespace": options.namespace, "labels": _labels(component, tenant)}
    if tenant:
        meta["annotations"] = {f"{LABEL_PREFIX}/tenant": tenant}
    return meta


def _read_only_source(volume: dict) -> dict:
    """The tenant's volume, read-only at its source too where the type has the field: a
    mounter then never changes ownership for the pod's fsGroup either."""
    (kind, spec), = volume.items()
    spec = dict(spec)
    if kind in ("nfs", "persistentVolumeClaim", "csi"):
        spec["readOnly"] = True
    return {kind: spec}


def _security(user: int, task: str) -> tuple[dict, dict]:
    """(pod, container) security contexts. Non-root: the pod's fsGroup is the user's own
    group, so the Secret files are root:USER 0440 and nobody else's. Root (run_as_user 0,
    for sources no other uid can read): no fsGroup, Secret files 0400 root's own, and only
    the capabilities the task needs to read the data."""
    pod = {"runAsUser": user, "runAsGroup": user, "seccompProfile": {"type": "RuntimeDefault"}}
    capabilities = {"drop": ["ALL"]}
    if user == 0:
        pod["runAsNonRoot"] = False
        if ROOT_CAPABILITIES[task]:
            capabilities["add"] = ROOT_CAPABILITIES[task]
    else:
        pod.update(runAsNonRoot=True, fsGroup=user, fsGroupChangePolicy="OnRootMismatch")
    container = {"allowPrivilegeEscalation": False, "privileged": False,
                 "readOnlyRootFilesystem": True, "capabilities": capabilities}
    return pod, container


def _environment(user: int, options: Options, tenant: str | None) -> list[dict]:
    env = {"BKP_POLICIES": POD_POLICIES, "BKP_HOME": POD_HOME, "HOME": POD_HOME,
           "TMPDIR": POD_TMP, "BKP_OPERATOR": "scheduler"}
    if options.config_text is not None:
        env["BKP_CONFIG"] = f"{POD_CONFIG_DIR}/bkp.yaml"
    if tenant:
        env["BKP_SNAPSHOT_HOST"] = tenant  # the parent snapshot is found although the pod's
        #                                    name changes every night
    if user != 0:
        env["BKP_SECRET_GROUP"] = str(user)
    return [{"name": key, "value": value} for key, value in env.items()]


def _state_volumes(options: Options, home: dict) -> tuple[list[dict], list[dict]]:
    volumes = [{"name": "home", **home}, {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "home", "mountPath": POD_HOME}, {"name": "tmp", "mountPath": POD_TMP}]
    if options.config_text is not None:
        volumes.append({"name": "config", "configMap": {"name": "bkp-config"}})
        mounts.append({"name": "config", "mountPath": POD_CONFIG_DIR, "readOnly": True})
    return volumes, mounts


def _secret_volume(name: str, secret: str, files: tuple[SecretFile, ...]
                   ) -> tuple[dict, list[dict]]:
    volume = {"name": name, "secret": {
        "secretName": secret, "defaultMode": 0o400,
        "items": [{"key": f.key, "path": f.key} for f in files]}}
    mounts = [{"name": name, "mountPath": f.path, "subPath": f.key, "readOnly": True}
              for f in files]
    return volume, mounts


def tenant_pod(plan: TenantPlan, task: str, options: Options) -> dict:
    policy = plan.policy
    volumes, mounts = _state_volumes(options, {"emptyDir": {}})
    volumes.append({"name": "policy", "configMap": {
        "name": plan.configmap, "items": [{"key": f"{policy.tenant}.yaml",
                                           "path": f"{policy.tenant}.yaml"}]}})
    mounts.append({"name": "policy", "mountPath": POD_POLICIES, "readOnly": True})
    volume, secret_mounts = _secret_volume("secrets", plan.secret, plan.files)
    volumes.append(volume)
    mounts += secret_mounts
    if task == "maintain" and plan.maintenance_secret:
        volume, secret_mounts = _secret_volume("maintenance", plan.maintenance_secret,
                                               plan.maintenance_files)
        volumes.append(volume)
        mounts += secret_mounts
    if task in ("backup", "drill") and plan.sources:
        volumes.append({"name": "sources", **_read_only_source(plan.setup.sources)})
        mounts += [{"name": "sources", "mountPath": path, "readOnly": True,
                    **({"subPath": sub} if sub else {})} for path, sub in plan.sources]
    if policy.destination.type == "local" and plan.setup.repository:
        volumes.append({"name": "repository", **plan.setup.repository})
        mounts.append({"name": "repository", "mountPath": _normal(policy.destination.path)})
    signed = options.results is not None and task in ("backup", "drill")
    if signed:
        _inbox_mount(options, volumes, mounts, read_only=False)
    pod = _pod(plan.run_as_user, task, options, policy.tenant, [task, policy.tenant],
               volumes, mounts, RESOURCES)
    if signed:
        pod["containers"][0]["env"].append({
            "name": "BKP_RESULT_KEY", "value": _normal(str(options.results.private_key(
                policy.tenant)))})
    return pod


def _inbox_mount(options: Options, volumes: list[dict], mounts: list[dict],
                 read_only: bool) -> None:
    """A shared-directory inbox is a volume of its own (kubernetes.inbox); an s3 or sftp
    inbox needs only its credentials or SSH key, which are among the Secret's files."""
    results = options.results
    if results.inbox.type != "local":
        return
    volumes.append({"name": "inbox", **options.inbox_volume})
    mounts.append({"name": "inbox", "mountPath": _normal(results.inbox.path),
                   **({"readOnly": True} if read_only else {})})


def _pod(user: int, task: str, options: Options, tenant: str | None, args: list[str],
         volumes: list[dict], mounts: list[dict], resources: dict) -> dict:
    pod_security, container_security = _security(user, task)
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [{
            "name": CONTAINER, "image": options.image, "imagePullPolicy": "IfNotPresent",
            "args": args, "env": _environment(user, options, tenant),
            "resources": resources, "securityContext": container_security,
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }


def _cronjob(name: str, component: str, schedule: str, deadline: int, pod: dict,
             options: Options, tenant: str | None = None) -> dict:
    spec = {
        "schedule": schedule,
        **({"timeZone": options.time_zone} if options.time_zone else {}),
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": STARTING_DEADLINE,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 5,
        "jobTemplate": {
            "metadata": {"labels": _labels(component, tenant)},
            "spec": {
                "backoffLimit": BACKOFF_LIMIT,
                "activeDeadlineSeconds": deadline,
                "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
                "podFailurePolicy": {"rules": [
                    {"action": "FailJob", "onExitCodes": {
                        "containerName": CONTAINER, "operator": "In",
                        "values": list(FINAL_EXIT_CODES)}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]},
                "template": {"metadata": {"labels": _labels(component, tenant)},
                             "spec": pod},
            },
        },
    }
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": _metadata(name, options, component, tenant), "spec": spec}


def tenant_cronjobs(plan: TenantPlan, options: Options) -> list[dict]:
    policy = plan.policy
    timeout = policy.timeout_minutes * 60 + DEADLINE_MARGIN
    jobs = []
    if policy.schedule.backup:
        jobs.append(_cronjob(cronjob_name("backup", policy.tenant), "backup",
                             spread_schedule(policy.schedule.backup, policy.tenant,
                                             options.spread),
                             timeout, tenant_pod(plan, "backup", options), options,
                             policy.tenant))
    if policy.schedule.drill:
        drill_deadline = max(policy.timeout_minutes, policy.drill.rto_minutes) * 60 \
            + DEADLINE_MARGIN
        jobs.append(_cronjob(cronjob_name("drill", policy.tenant), "drill",
                             policy.schedule.drill, drill_deadline,
                             tenant_pod(plan, "drill", options), options, policy.tenant))
    if policy.destination.append_only or any(c.destination.append_only
                                             for c in policy.copies):
        # `bkp maintain` applies retention on an append-only destination and on each
        # append-only copy, with their deleting credentials (the maintenance Secret).
        jobs.append(_cronjob(cronjob_name("maintain", policy.tenant), "maintain",
                             maintenance_schedule(policy.tenant), timeout,
                             tenant_pod(plan, "maintain", options), options, policy.tenant))
    return jobs


def gatherer_cronjob(plans: list[TenantPlan], cluster: Cluster, options: Options,
                     configmaps: list[str]) -> dict:
    """`bkp catalog sync --all` on the central catalog (a PersistentVolumeClaim), with every
    policy and every tenant's nightly Secret: it reads each repository's snapshot list."""
    user = cluster.run_as_user
    volumes, mounts = _state_volumes(
        options, {"persistentVolumeClaim": {"claimName": cluster.catalog_claim}})
    volumes.append({"name": "policies", "projected": {
        "defaultMode": 0o444, "sources": [{"configMap": {"name": name}} for name in configmaps]}})
    mounts.append({"name": "policies", "mountPath": POD_POLICIES, "readOnly": True})
    seen: set[str] = set()
    for index, plan in enumerate(plans):
        # One host file, one mount; never a tenant's private result key (the gatherer
        # verifies with the public keys only).
        own_key = (_normal(str(options.results.private_key(plan.policy.tenant)))
                   if options.results is not None else None)
        files = tuple(f for f in plan.files if f.path not in seen and f.path != own_key)
        seen |= {f.path for f in files}
        if files:
            volume, secret_mounts = _secret_volume(f"secrets-{index}", plan.secret, files)
            volumes.append(volume)
            mounts += secret_mounts
        if plan.policy.destination.type == "local" and plan.setup.repository:
            volumes.append({"name": f"repository-{index}", **plan.setup.repository})
            mounts.append({"name": f"repository-{index}",
                           "mountPath": _normal(plan.policy.destination.path)})
    if options.results is not None:
        volumes.append({"name": "result-keys", "configMap": {
            "name": "bkp-result-keys", "defaultMode": 0o444}})
        mounts.append({"name": "result-keys", "mountPath": _normal(str(options.results.keys)),
                       "readOnly": True})
        _inbox_mount(options, volumes, mounts, read_only=True)
    pod = _pod(user, "gather", options, None, ["catalog", "sync", "--all"], volumes, mounts,
               GATHER_RESOURCES)
    return _cronjob("bkp-gatherer", "gatherer", options.gather_schedule, GATHER_DEADLINE, pod,
                    options)


def policy_configmaps(plans: list[TenantPlan], options: Options
                      ) -> tuple[list[dict], list[TenantPlan]]:
    """The policies in ConfigMaps of at most CONFIGMAP_BYTES each (a thousand policies do not
    fit in one object), and the plans with the name of the one that holds theirs."""
    maps: list[dict] = []
    placed = []
    size = CONFIGMAP_BYTES
    for plan in plans:
        text = plan.policy.file.read_text(encoding="utf-8")
        if size + len(text.encode()) > CONFIGMAP_BYTES:
            maps.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": _metadata(f"bkp-policies-{len(maps) + 1}", options,
                                               "policies"), "data": {}})
            size = 0
        maps[-1]["data"][f"{plan.policy.tenant}.yaml"] = text
        size += len(text.encode())
        placed.append(replace(plan, configmap=maps[-1]["metadata"]["name"]))
    return maps, placed


def render(policies: list[Policy], cluster: Cluster, options: Options) -> Rendering:
    rendering = Rendering()
    plans = []
    for policy in policies:
        plan = plan_tenant(policy, cluster, options.results)
        if isinstance(plan, str):
            rendering.problems.append((policy.tenant, f"{policy.tenant} {plan}; no CronJob"))
        else:
            plans.append(plan)
    configmaps, plans = policy_configmaps(plans, options)
    if options.config_text is not None:
        rendering.manifests.append({"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": _metadata("bkp-config", options, "config"),
                                    "data": {"bkp.yaml": options.config_text}})
    rendering.manifests += configmaps
    if options.results is not None and plans:
        rendering.manifests.append({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata("bkp-result-keys", options, "result-keys"),
            "data": {f"{p.policy.tenant}.result.pub": options.result_keys.get(
                p.policy.tenant, "") for p in plans}})
    for plan in plans:
        rendering.manifests += tenant_cronjobs(plan, options)
        rendering.secrets.append((plan.policy.tenant, plan.secret, plan.files))
        if plan.maintenance_secret:
            rendering.secrets.append((plan.policy.tenant, plan.maintenance_secret,
                                      plan.maintenance_files))
    if plans:  # nothing to gather without a tenant
        rendering.manifests.append(gatherer_cronjob(
            plans, cluster, options, [m["metadata"]["name"] for m in configmaps]))
    return rendering


# ---------------------------------------------------------------- as text

def secret_commands(rendering: Rendering, namespace: str) -> list[str]:
    """The kubectl line that makes each Secret from the files on this host: names and paths,
    never a value."""
    lines = []
    for _, name, files in rendering.secrets:
        sources = " ".join(f"--from-file={shlex.quote(f.key)}={shlex.quote(f.path)}"
                           for f in files)
        lines.append(f"kubectl -n {namespace} create secret generic {name} {sources}")
    return lines


def to_yaml(rendering: Rendering, options: Options) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    header = [
        "# bkp on Kubernetes: rendered by `bkp schedule --format kubernetes`.",
        "# Apply: kubectl apply -f THIS_FILE. First make each tenant's Secret from the files",
        "# its policy names (values never appear in this file):",
        *(f"#   {line}" for line in secret_commands(rendering, options.namespace)),
        "# The gatherer's catalog lives on the PersistentVolumeClaim it names; see "
        "runbooks/kubernetes.md.",
    ]
    body = yaml.dump_all(rendering.manifests, Dumper=Dumper, sort_keys=False,
                         default_flow_style=False, width=100)
    return "\n".join(header) + "\n---\n" + body

