"""``pglocalai install`` and ``pglocalai uninstall`` for one PostgreSQL cluster.

Idempotent: every step compares what is there with what it would write and skips when
equal, so a re-run costs a few seconds (and starts a runtime that is not running, e.g.
after a reboot on a machine without systemd). Every path is recorded in the cluster's
manifest (:mod:`pglocalai.install.manifest`) before the uninstall needs it.
"""

from __future__ import annotations

import grp
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pglocalai.errors import PglocalaiError
from pglocalai.install import (
    DEFAULT_LIB_DIR,
    DEFAULT_MODELS_DIR,
    DEFAULT_PREFIX,
    MANIFEST_DIR,
    STATE_ROOT,
    InstallError,
    fsops,
    runtime_env,
    serverlib,
)
from pglocalai.install.manifest import Entry, Manifest
from pglocalai.install.pgserver import Cluster, PgServer
from pglocalai.install.service import (
    RuntimeService,
    WorkerService,
    stop_supervised,
    supervised_pid,
    systemd_runs,
    systemd_start,
    systemd_stop,
)

DEFAULT_MODEL = "multilingual-e5-small:v1"
CONF_NAME = "pglocalai.conf"
Say = Callable[[str], None]


@dataclass
class Options:
    pg_config: str | None = None
    cluster: str | None = None  # VERSION/NAME; default <major>/main
    prefix: Path = Path(DEFAULT_PREFIX)
    lib_dir: Path = Path(DEFAULT_LIB_DIR)
    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    models_from: Path | None = None
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    service: str = "auto"  # auto | systemd | supervisor | none
    source: Path | None = None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise InstallError("pglocalai install and uninstall must run as root",
                           hint="run it with sudo, or as root")


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _tree(path: Path) -> str | None:
    return fsops.tree_digest(path) if path.is_dir() and not path.is_symlink() else None


def runtime_of(cluster: Cluster, opts: Options) -> RuntimeService:
    return RuntimeService(cluster.id, cluster.owner, grp.getgrgid(cluster.owner_ids[1]).gr_name,
                          opts.prefix / "venv", opts.models_dir)


def conf_text(runtime: RuntimeService, lib_dir: Path) -> bytes:
    lines = ["# Written by `pglocalai install`; removed by `pglocalai uninstall`.",
             f"azure_local_ai.runtime_socket = '{runtime.socket}'"]
    if str(lib_dir) != DEFAULT_LIB_DIR:
        lines.append(f"azure_local_ai.python_lib_dir = '{lib_dir}'")
    return ("\n".join(lines) + "\n").encode()


def install(opts: Options, say: Say = print) -> RuntimeService:
    """Install into one cluster; returns its runtime (answering when this returns)."""
    _require_root()
    os.umask(0o022)
    server = PgServer.find(opts.pg_config)
    for warning in server.check_prerequisites():
        say(f"warning: {warning}")
    cluster = Cluster.find(opts.cluster or f"{server.major}/main")
    if cluster.version != server.major:
        raise InstallError(f"cluster {cluster.version}/{cluster.name} is not PostgreSQL "
                           f"{server.major}", hint="pass the pg_config of its server")
    source = opts.source or runtime_env.checkout_root()
    spec = f"{cluster.version}/{cluster.name}"
    m = Manifest.load(spec) or Manifest(spec)
    runtime = runtime_of(cluster, opts)
    say(f"installing pglocalai into PostgreSQL {spec} ({server.pg_config})")

    # 1. the extension's control and SQL files
    m.note_dirs(fsops.make_dirs(server.extension_dir))
    for src in serverlib.extension_sources(source / "extension"):
        dest, data = server.extension_dir / src.name, src.read_bytes()
        m.place(dest, "file", _sha(data) or "", lambda d=dest: _sha(fsops.read_file(d)),
                lambda d=dest, b=data: fsops.write_file(d, b))

    # 2. the server-side package, one folder per extension version
    package = source / "src" / "pglocalai"
    for target in serverlib.lib_targets(opts.lib_dir):
        m.note_dirs(fsops.make_dirs(target.parent))
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            built = Path(tmp) / "pglocalai"
            fsops.install_tree(package, built, serverlib.server_files(package))
            m.place(target, "tree", fsops.tree_digest(built), lambda t=target: _tree(t),
                    lambda t=target, b=built: _swap_in(b, t))
    say(f"extension files in {server.extension_dir}, Python package in {opts.lib_dir}")

    # 3. the runtime's virtual environment (system interpreter) and the model store
    venv = runtime.venv
    m.note_dirs(fsops.make_dirs(venv.parent))
    wanted = runtime_env.wanted_stamp(source)
    changed = m.place(venv, "venv", _sha(repr(sorted(wanted.items())).encode()) or "",
                      lambda: _venv_digest(venv),
                      lambda: runtime_env.ensure_venv(venv, source, say))
    m.note_dirs(fsops.make_dirs(opts.models_dir))
    lock = opts.models_dir / ".lock"  # the store's own lock file, made on its first write
    had_lock = lock.exists()
    for uri in opts.models:
        changed |= _place_model(m, opts, uri, say)
    if not had_lock and lock.is_file() and m.entry(lock) is None:
        m.entries.insert(0, Entry(str(lock), "file", "created", _sha(b"") or ""))

    # 4. the cluster's setting, then the runtime
    m.note_dirs(fsops.make_dirs(runtime.state_dir.parent))
    fsops.make_private_dir(runtime.state_dir, cluster.owner_ids)
    if m.entry(runtime.state_dir) is None:
        m.entries.append(Entry(str(runtime.state_dir), "state", "created"))
    conf = cluster.conf_d / CONF_NAME
    if not cluster.conf_d.is_dir():
        raise InstallError(f"\"{cluster.conf_d}\" does not exist",
                           hint="postgresql.conf must include_dir = 'conf.d' (Debian's default)")
    text = conf_text(runtime, opts.lib_dir)
    if m.place(conf, "file", _sha(text) or "", lambda: _sha(fsops.read_file(conf)),
               lambda: fsops.write_file(conf, text, 0o644, cluster.owner_ids)):
        cluster.reload()
        say(f"set azure_local_ai.runtime_socket = '{runtime.socket}' in {conf}")
    _start_runtime(m, runtime, opts, restart=changed, say=say)
    _start_worker(m, WorkerService(runtime, cluster.socketdir, cluster.port), restart=changed,
                  say=say)
    m.save()
    say(f"done: the runtime answers on {runtime.socket} as user {runtime.user}; in a "
        "database run: CREATE EXTENSION azure_local_ai CASCADE")
    return runtime


def _swap_in(built: Path, target: Path) -> None:
    serverlib.compile_and_swap(built, target, target.with_name(f".{target.name}.old"))


def _venv_digest(venv: Path) -> str | None:
    stamp = runtime_env.read_stamp(venv)
    if not stamp and not venv.exists():
        return None
    if not stamp:
        raise InstallError(f"\"{venv}\" exists and was not made by pglocalai",
                           hint="remove it, or choose another --prefix")
    return _sha(repr(sorted(stamp.items())).encode())


def _place_model(m: Manifest, opts: Options, uri: str, say: Say) -> bool:
    from pglocalai.models.store import uri_to_dirname  # noqa: PLC0415

    folder = opts.models_dir / uri_to_dirname(uri)
    existed = (folder / "metadata.json").is_file()
    changed = bool(runtime_env.ensure_models(opts.models_dir, [uri], opts.models_from,
                                             say=say))
    digest = _sha(fsops.read_file(folder / "metadata.json")) or ""
    entry = m.entry(folder)
    if entry is None:
        claimed = any((o.entry(folder) or Entry("", "", "adopted")).state != "adopted"
                      for o in m.others())
        state = "shared" if claimed else ("adopted" if existed and not changed else "created")
        entry = Entry(str(folder), "model", state)
        m.entries.append(entry)
    entry.digest = digest
    m.save()
    return changed


def _start_runtime(m: Manifest, runtime: RuntimeService, opts: Options, *, restart: bool,
                   say: Say) -> None:
    mode = opts.service
    if mode == "auto":
        mode = "systemd" if systemd_runs() else "supervisor"
    m.service = {"mode": mode, "unit": runtime.unit_name, "socket": runtime.socket}
    if mode == "none":
        say(f"not starting a runtime (--service none): start one on {runtime.socket}")
        return
    if mode == "systemd":
        restart = _place_unit(m, runtime.unit_path, runtime.unit_text()) or restart
        systemd_start(runtime.unit_name, restart=restart and runtime.answers())
        say(f"systemd runs the runtime: {runtime.unit_name} (user {runtime.user})")
    else:
        if restart and runtime.supervisor_stop():
            say("stopped the runtime to start the new code or models")
        if m.entry(runtime.socket_dir) is None:
            m.entries.append(Entry(str(runtime.socket_dir), "state", "created"))
        if not runtime.answers():
            runtime.supervisor_start()
            say(f"started the runtime under the supervisor as {runtime.user} "
                f"(log {runtime.log_file}); without systemd, re-run pglocalai install after a "
                "reboot to start it again")
    runtime.wait_answering()


def _place_unit(m: Manifest, path: Path, text: str) -> bool:
    """Write a unit file through the manifest; True if it was written (new or changed)."""
    unit = text.encode()
    return m.place(path, "file", _sha(unit) or "", lambda: _sha(fsops.read_file(path)),
                   lambda: fsops.write_file(path, unit))


def _start_worker(m: Manifest, worker: WorkerService, *, restart: bool, say: Say) -> None:
    """The vectorizer worker, run like the runtime (its manifest's mode)."""
    mode = m.service.get("mode")
    m.service["worker_unit"] = worker.unit_name
    if mode == "systemd":
        restart = _place_unit(m, worker.unit_path, worker.unit_text()) or restart
        systemd_start(worker.unit_name, restart=restart)
        say(f"systemd runs the vectorizer worker: {worker.unit_name}")
    elif mode == "supervisor":
        if restart and worker.supervisor_stop():
            say("stopped the vectorizer worker to start the new code")
        if worker.supervisor_pid() is None:
            worker.supervisor_start()
            say(f"started the vectorizer worker under the supervisor as {worker.runtime.user} "
                f"for every database with a vectorizer (log {worker.log_file})")


# -- uninstall ------------------------------------------------------------------------------


def uninstall(opts: Options, *, force: bool = False, say: Say = print) -> None:
    """Stop the cluster's runtime and remove what its install put there."""
    _require_root()
    spec = opts.cluster
    if not spec:
        server = PgServer.find(opts.pg_config)
        spec = f"{server.major}/main"
    m = Manifest.load(spec)
    if m is None:
        say(f"pglocalai is not installed in cluster {spec} (no {MANIFEST_DIR} record): "
            "nothing to do")
        return
    try:
        cluster: Cluster | None = Cluster.find(spec)
    except PglocalaiError:  # a dropped cluster: remove the rest all the same
        cluster = None
    if cluster is not None and cluster.is_running() and not force:
        in_use = cluster.databases_with_extension("azure_local_ai")
        if in_use:
            raise InstallError(f"extension azure_local_ai is still created in cluster {spec}",
                               detail="databases: " + ", ".join(in_use),
                               hint="DROP EXTENSION azure_local_ai CASCADE in each of them, or "
                                    "pass --force to leave them without their files")
    _stop_runtime(m, spec, say)
    others = m.others()
    for entry in reversed(m.entries):
        _remove_entry(entry, others, say)
    if cluster is not None:
        cluster.reload()
    fsops.remove_file(m.path)
    fsops.remove_empty_dirs([Path(d) for d in m.dirs])
    fsops.remove_empty_dirs([Path(MANIFEST_DIR) / "backup", Path(MANIFEST_DIR),
                             Path(STATE_ROOT) / "clusters"])
    say(f"removed pglocalai from cluster {spec}")


def _stop_runtime(m: Manifest, spec: str, say: Say) -> None:
    svc = m.service
    if not svc or svc.get("mode") == "none":
        return
    runtime = RuntimeService(spec.replace("/", "-"), "root", "root", Path(), Path())
    worker = WorkerService(runtime, "", 0)
    if svc.get("mode") == "systemd":
        if svc.get("worker_unit"):  # the worker first: it uses the runtime
            systemd_stop(svc["worker_unit"])
        systemd_stop(runtime.unit_name)
    else:
        if stop_supervised(supervised_pid(worker.pidfile, None)):
            say(f"stopped the vectorizer worker of cluster {spec}")
        stop_supervised(supervised_pid(runtime.pidfile, None))
    say(f"stopped the runtime of cluster {spec}")


def _remove_entry(entry: Entry, others: list[Manifest], say: Say) -> None:
    path = Path(entry.path)
    if entry.state == "adopted":
        return
    claimants = [o for o in others
                 if (o.entry(path) or Entry("", "", "adopted")).state != "adopted"]
    if claimants:
        if entry.state == "replaced":  # the last one to go puts the old content back
            heir = claimants[0].entry(path)
            assert heir is not None
            heir.state, heir.backup = "replaced", entry.backup
            claimants[0].save()
        return
    if entry.kind in ("file", "tree", "model") and _digest(entry) not in (entry.digest, None):
        say(f"warning: left {path}: it changed since pglocalai installed it")
        return
    if entry.kind == "file":
        fsops.remove_file(path)
    else:
        fsops.remove_tree(path)
    if entry.state == "replaced" and entry.backup:
        backup = Path(entry.backup)
        if backup.is_dir():
            backup.rename(path)
        else:
            fsops.write_file(path, fsops.read_file(backup) or b"")
            fsops.remove_file(backup)


def _digest(entry: Entry) -> str | None:
    path = Path(entry.path)
    if entry.kind == "file":
        return _sha(fsops.read_file(path))
    if entry.kind == "tree":
        return _tree(path)
    if entry.kind == "model":
        return _sha(fsops.read_file(path / "metadata.json"))
    return None
