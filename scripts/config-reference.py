#!/usr/bin/python3
"""Keeps docs/configuration.md true to the code.

The blocks between `<!-- generated: NAME -->` and `<!-- end generated -->`
are what `chorus ... --print-config` prints: every key with its default, as
the code resolves it. This script rewrites them (default) or checks them
(--check); it also checks that every key of those blocks is described in
the document's tables (as `section.key`).

Usage: scripts/config-reference.py CHORUS [--check]
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def print_config(chorus, args, config_text=None):
    with tempfile.TemporaryDirectory() as tmp:
        if config_text is not None:
            (Path(tmp) / "config.toml").write_text(config_text)
            args = args + ["--config", "config.toml"]
        out = subprocess.run([chorus] + args + ["--print-config"], cwd=tmp, check=True,
                             capture_output=True, text=True)
    return out.stdout.strip() + "\n"


def blocks(chorus):
    return {
        "coordinator": print_config(chorus, ["coordinator"],
                                    '[coordinator]\nroster = ["hospital-a", "lab-b"]\n'),
        "node": print_config(chorus, ["node"]),
    }


def keys_of(toml):
    section, out = "", []
    for line in toml.splitlines():
        line = line.strip().lstrip("# ").strip()
        if m := re.fullmatch(r"\[([a-z_.]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"([a-z_]+) = ", line):
            out.append(f"{section}.{m.group(1)}")
    return out


def main():
    chorus, check = str(Path(sys.argv[1]).resolve()), "--check" in sys.argv[2:]
    text = DOC.read_text()
    generated = blocks(chorus)
    new = text
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n```toml\n)(.*?)(```\n<!-- end generated -->)",
                             re.S)
        if not pattern.search(new):
            sys.exit(f"{DOC}: no block '<!-- generated: {name} -->'")
        new = pattern.sub(lambda m: m.group(1) + body + m.group(3), new)
    problems = []
    if new != text:
        if check:
            problems.append("the generated blocks differ from what chorus prints; run "
                            "scripts/config-reference.py build/apps/chorus/chorus")
        else:
            DOC.write_text(new)
            print(f"updated {DOC}")
    for name, body in generated.items():
        for key in keys_of(body):
            if f"`{key}`" not in text:
                problems.append(f"{name} key `{key}` is not described in {DOC.name}")
    if problems:
        sys.exit("config reference: " + "\n  ".join([""] + problems))
    print(f"config reference: {sum(len(keys_of(b)) for b in generated.values())} keys, "
          "all current and described")


if __name__ == "__main__":
    main()
