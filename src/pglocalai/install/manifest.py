"""What an install put where, so that the uninstall removes exactly that.

One manifest per cluster (``/var/lib/pglocalai/installs/<version>-<name>.json``). Each
entry is one path and how it came to be:

``created``   absent before: removed by the uninstall (if still as written);
``shared``    written by the install of another cluster: removed by the last uninstall
              that lists it (the extension files, the runtime's environment, the models);
``adopted``   there before with the same content (``make install-ext`` put it there): left;
``replaced``  there before with other content: moved to a backup, put back by the uninstall.

A path whose content changed since the install is left alone, with a warning.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pglocalai.install import MANIFEST_DIR, fsops

BACKUP_DIR = "backup"


@dataclass
class Entry:
    path: str
    kind: str  # file | tree | venv | model | state
    state: str  # created | shared | adopted | replaced
    digest: str = ""
    backup: str = ""


@dataclass
class Manifest:
    cluster: str
    entries: list[Entry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # folders the install created
    service: dict[str, Any] = field(default_factory=dict)
    root: Path = Path(MANIFEST_DIR)

    @property
    def path(self) -> Path:
        return self.root / (self.cluster.replace("/", "-") + ".json")

    @classmethod
    def load(cls, cluster: str, root: Path | None = None) -> Manifest | None:
        m = cls(cluster, root=root or Path(MANIFEST_DIR))
        data = fsops.read_file(m.path)
        if data is None:
            return None
        raw = json.loads(data)
        m.entries = [Entry(**e) for e in raw.get("entries", [])]
        m.dirs = list(raw.get("dirs", []))
        m.service = dict(raw.get("service", {}))
        return m

    def save(self) -> None:
        self.note_dirs(fsops.make_dirs(self.root.parent) + fsops.make_dirs(self.root, 0o700))
        data = {"cluster": self.cluster, "entries": [asdict(e) for e in self.entries],
                "dirs": self.dirs, "service": self.service}
        fsops.write_file(self.path, json.dumps(data, indent=1).encode() + b"\n", 0o600)

    def others(self) -> list[Manifest]:
        found = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            if path != self.path:
                raw = json.loads(path.read_text())
                other = Manifest.load(raw["cluster"], self.root)
                if other is not None:
                    found.append(other)
        return found

    def entry(self, path: Path) -> Entry | None:
        return next((e for e in self.entries if e.path == str(path)), None)

    def note_dirs(self, created: list[Path]) -> None:
        self.dirs += [str(p) for p in created if str(p) not in self.dirs]

    # -- placing ------------------------------------------------------------------------

    def place(self, path: Path, kind: str, wanted: str, current: Callable[[], str | None],
              write: Callable[[], None]) -> bool:
        """Make ``path`` hold content of digest ``wanted`` (``write`` does it) and record
        how; returns True when it wrote."""
        have = current()
        entry = self.entry(path)
        if entry is None:
            claimed = any(o.entry(path) and o.entry(path).state != "adopted"  # type: ignore[union-attr]
                          for o in self.others())
            if have is None:
                state = "created"
            elif claimed:
                state = "shared"
            elif have == wanted:
                state = "adopted"
            else:
                state = "replaced"
            entry = Entry(str(path), kind, state)
            if state == "replaced":
                entry.backup = str(self._backup(path))
            self.entries.append(entry)
        entry.digest = wanted
        if have != wanted or not _exists(path):
            write()
            self.save()
            return True
        self.save()
        return False

    def _backup(self, path: Path) -> Path:
        target = self.root / BACKUP_DIR / uuid.uuid4().hex
        self.save()  # creates the manifests folder first, with its own mode
        self.note_dirs(fsops.make_dirs(target.parent, 0o700))
        if path.is_dir() and not path.is_symlink():
            shutil.move(str(path), str(target))
        else:
            fsops.write_file(target, fsops.read_file(path) or b"", 0o600)
        return target


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()
