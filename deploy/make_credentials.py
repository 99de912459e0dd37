"""Write fresh random credentials for docker-compose.yml into deploy/credentials (never committed)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import uuid
from pathlib import Path

#: The image's user and group (Dockerfile); compose bind-mounts secrets with their host owner and mode.
IMAGE_GID = 10001
LEAVES = ("a", "b")


def _leaf(name: str, tree_id: str, branch_id: str, owner_id: str) -> dict[str, str]:
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "session_token": secrets.token_urlsafe(32),
        "tree_id": tree_id,
        "branch_id": branch_id,
        "owner_id": owner_id,
    }


def credentials() -> dict[str, str]:
    """File name -> content: the aggregator's leaves, one leaf per gateway, one token per gateway."""
    tree_id, branch_id, owner_id = (str(uuid.uuid4()) for _ in range(3))
    leaves = {x: _leaf(f"leaf-{x}", tree_id, branch_id, owner_id) for x in LEAVES}
    files = {"leaves.json": json.dumps(list(leaves.values()), indent=2) + "\n"}
    for x, leaf in leaves.items():
        files[f"leaf-{x}.json"] = json.dumps(leaf, indent=2) + "\n"
        files[f"gateway-{x}.env"] = (
            f"# gateway-{x} and trainer-{x} read this file (docker-compose.yml: env_file).\n"
            f"GATEWAY_TOKEN={secrets.token_urlsafe(32)}\n"
        )
    return files


def write(out: Path, force: bool, gid: int) -> list[Path]:
    """Write the files (JSON 0640 for the container's group, env files 0600); return those whose group is not `gid`."""
    files = credentials()
    existing = [name for name in files if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} already exist in {out}: pass --force to replace them "
            "(the aggregator then needs a restart, and the old tokens stop working)."
        )
    out.mkdir(parents=True, exist_ok=True)
    regroup: list[Path] = []
    for name, content in files.items():
        path = out / name
        mode = 0o600 if name.endswith(".env") else 0o640
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(tmp, mode)  # an existing tmp file kept its old mode
        if mode == 0o640:
            try:
                os.chown(tmp, -1, gid)
            except PermissionError:
                regroup.append(path)
        os.replace(tmp, path)
    return regroup


def main(argv: list[str] | None = None) -> int:
    """Command line: `python deploy/make_credentials.py [--out DIR] [--force] [--gid GID]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "credentials")
    parser.add_argument("--force", action="store_true", help="replace existing credentials")
    parser.add_argument(
        "--gid", type=int, default=IMAGE_GID, help="group that may read the JSON files"
    )
    args = parser.parse_args(argv)
    try:
        regroup = write(args.out, args.force, args.gid)
    except FileExistsError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    sys.stdout.write(f"wrote leaves.json, leaf-a/b.json and gateway-a/b.env in {args.out}\n")
    if regroup:
        names = " ".join(str(path) for path in regroup)
        sys.stdout.write(
            f"the containers (group {args.gid}) cannot read them yet; on Linux run:\n"
            f"  sudo chgrp {args.gid} {names}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
