#!/usr/bin/env python3
"""The declared MSRV tells the truth: the workspace's rust-version is at least the highest
rust-version any locked dependency declares, and the README says the same version.

Reads `cargo metadata --locked` (every package the lock file resolves, on every platform), so a
dependency update that raises the bar fails CI until Cargo.toml and the README say so.
"""
import json
import re
import subprocess
import sys
from pathlib import Path


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    root = Path(__file__).resolve().parent.parent
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=root, check=True, capture_output=True, text=True,
        ).stdout
    )
    members = set(meta["workspace_members"])
    ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
    if len(ours) != 1 or None in ours:
        sys.exit(f"every workspace crate should inherit one rust-version; found {sorted(map(str, ours))}")
    declared = ours.pop()
    needed = max(
        ((p["rust_version"], p["name"]) for p in meta["packages"]
         if p["id"] not in members and p.get("rust_version")),
        key=lambda t: version(t[0]),
    )
    if version(declared) < version(needed[0]):
        sys.exit(
            f"rust-version says {declared}, but {needed[1]} needs {needed[0]}: "
            "raise rust-version in Cargo.toml (and the README), or hold that dependency back"
        )
    readme = (root / "README.md").read_text()
    said = re.search(r"Rust (\d+\.\d+(?:\.\d+)?) or newer", readme)
    if not said or said.group(1) != declared:
        sys.exit(f"README should say 'Rust {declared} or newer' (it says {said.group(0) if said else 'nothing'})")
    print(f"MSRV {declared}: the highest a locked dependency needs is {needed[0]} ({needed[1]})")


if __name__ == "__main__":
    main()
