"""Which folders the policy watcher watches, and which changes in them can change the policy
(``gateway.reload_triggers``; pure but for reading symlinks).

It watches *folders*, never a file's inode: an editor that saves by renaming, and Kubernetes,
which updates a mounted ConfigMap by renaming a new ``..data`` symlink over the old one (the
file ``policy.yaml`` is a symlink ``..data/policy.yaml`` and never changes itself), replace the
file's inode, and a watch on it would see the first update and then nothing. Which folders
(``watch_folders``): the one holding the policy's files once every symlink is followed, and
the one holding each symlink met on the way (a policy file linked to another folder, a policy
folder that is itself a symlink, as a ConfigMap item with a ``path`` in a sub-folder is), but
never a folder under a ``..``-name (the atomic writer's timestamped folders, deleted at the
next update). Only changes that can change the policy count (``policy_change``): the policy's
names and its links' names, ``*.yaml``/``*.yml`` (not dotfiles) for a policy folder, and the
``..``-names of Kubernetes' atomic writer; an audit file beside the policy does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["policy_change", "watch_folders"]

_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS


def _symlinks(path: Path) -> tuple[list[Path], Path]:
    """The symlinks met resolving ``path`` (each as its own, resolved, path) and where ``path``
    leads; a loop or a chain longer than the kernel's stops the walk where it is."""
    parts = list(Path(os.path.abspath(path)).parts)
    current = Path(parts[0])
    pending = parts[1:]
    links: list[Path] = []
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        if part in ("", "."):
            continue
        candidate = current / part
        if candidate.is_symlink() and len(links) < _SYMLINK_HOPS:
            links.append(candidate)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.parts[0])
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        current = candidate
    return links, current


def _transient(folder: Path) -> bool:
    """A folder under a ``..``-name: Kubernetes' atomic writer deletes it at the next update."""
    return any(part.startswith("..") and part != ".." for part in folder.parts)


def watch_folders(path: Path) -> list[Path]:
    """The folders the watcher watches for the policy at ``path`` (a file or a folder): the one
    holding its files once every symlink is followed, and the one holding each symlink on the
    way; none under a ``..``-name (see the module docstring)."""
    links, real = _symlinks(path)
    folders: list[Path] = []
    for folder in [real if real.is_dir() else real.parent, *(link.parent for link in links)]:
        if not _transient(folder) and folder not in folders:
            folders.append(folder)
    if not folders:  # every folder is a timestamped one: watch where the path says
        folders.append(Path(os.path.abspath(path if path.is_dir() else path.parent)))
    return folders


def policy_change(path: Path) -> Callable[[str], bool]:
    """Which changed paths, in the folders the watcher watches, can change the policy at ``path``
    (a file or a folder): its own name and its symlinks' names, a ``*.yaml``/``*.yml`` (not a
    dotfile) for a policy folder, and the names Kubernetes' atomic writer swaps (``..data``,
    ``..data_tmp``, ``..<timestamp>``)."""
    folder = path.is_dir()
    links, real = _symlinks(path)
    names = {Path(os.path.abspath(path)).name, real.name, *(link.name for link in links)}

    def relevant(changed: str) -> bool:
        name = Path(changed).name
        if name.startswith(".."):
            return True
        if name in names:
            return True
        return folder and not name.startswith(".") and Path(name).suffix in (".yaml", ".yml")

    return relevant
