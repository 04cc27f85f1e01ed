"""This node's key, the same on every start.

``--node-key FILE`` when given; otherwise ``node.key`` in the data directory (``--data-dir``, env
``INTERLACE_DATA_DIR``; default ``$XDG_DATA_HOME/interlace``, else ``~/.local/share/interlace``),
created on the first start (the directory 0700, the file 0600 from its first byte, see
``Identity.save``) and loaded on every later one. The node's ``did:key`` signs its gossip, the
requests it forwards, its A2A cards and its did:wba document, and other nodes list it in their
``--trust`` files: a key that changed at each start would make those lists stale.

Gateways on one machine that keep the default share one key (one identity under several node
ids); give each its own ``--data-dir`` to tell them apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.core.config import Config
from registry.identity import Identity, KeyFileError

__all__ = ["KEY_FILE", "default_data_dir", "node_identity", "node_key_path"]

KEY_FILE = "node.key"


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/interlace``, or ``~/.local/share/interlace`` (the XDG default; a relative
    ``XDG_DATA_HOME`` is invalid by the spec and ignored)."""
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "interlace"


def node_key_path(config: Config) -> Path:
    """The key file this node uses: ``--node-key``, else ``node.key`` in the data directory."""
    if config.node_key:
        return Path(config.node_key)
    return (Path(config.data_dir) if config.data_dir else default_data_dir()) / KEY_FILE


def node_identity(config: Config) -> Identity:
    """Load this node's key, creating it in the data directory on the first start. A
    ``KeyFileError`` for a key file that is malformed or readable by others (``Identity.load``),
    a ``ValueError`` naming the directory when it cannot be created or written."""
    path = node_key_path(config)
    if config.node_key is None and not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Identity.generate().save(path)
        except KeyFileError:
            pass  # another process created it meanwhile: load theirs
        except OSError as exc:
            raise ValueError(f"cannot create the node key {path}: {exc.strerror} (see --data-dir)") from None
    return Identity.load(path)
