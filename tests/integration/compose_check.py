#!/usr/bin/python3
"""Checks docker-compose.yml (as `docker-compose config` resolved it) and the
Dockerfile against the project: every path, port, role and command they name
exists, each party has its own volume, only the coordinator publishes a port.

    compose_check.py RESOLVED.yml SOURCE_DIR CHORUS

Prints "ok: ..." per check; exits 1 on the first failure, naming it.
"""
import os
import re
import subprocess
import sys

import yaml

resolved, src, chorus = sys.argv[1], sys.argv[2], sys.argv[3]
config = yaml.safe_load(open(resolved))
services = config["services"]
checks = 0


def check(what, ok, detail=""):
    global checks
    checks += 1
    if not ok:
        sys.exit(f"FAILED: {what}{': ' + detail if detail else ''}")
    print(f"ok: {what}")


def toml_value(path, key):
    for line in open(path):
        m = re.match(rf"\s*{key}\s*=\s*(.+?)\s*(#.*)?$", line)
        if m:
            return m.group(1)
    return None


entrypoint = os.path.join(src, "deploy/compose/entrypoint.sh")
roles = set(re.findall(r"^  ([a-z]+)\)$", open(entrypoint).read(), re.M))
coordinator_toml = os.path.join(src, "deploy/compose/coordinator.toml")
roster = re.findall(r'"([^"]+)"', toml_value(coordinator_toml, "roster"))
port = int(toml_value(coordinator_toml, "port"))

check("the services are a CA, a coordinator and three nodes",
      set(services) == {"ca", "coordinator", "node-a", "node-b", "node-c"},
      str(sorted(services)))
party_volumes = {}
for name, s in services.items():
    command = s.get("command", [])
    check(f"{name}: its role '{command[0]}' is one the entrypoint knows",
          command and command[0] in roles, f"roles: {sorted(roles)}")
    check(f"{name}: restarts unless stopped",
          s.get("restart") == "unless-stopped")
    hc = s.get("healthcheck", {}).get("test", [])
    check(f"{name}: has a health check the entrypoint answers",
          hc[:3] == ["CMD", "chorus-entrypoint", "health"] and "health" in roles,
          str(hc))
    # docker-compose 1.x writes "source:target:mode"; the spec, mappings.
    mounts = [v if isinstance(v, dict) else
              dict(zip(("source", "target"), v.split(":")[:2]))
              for v in s.get("volumes", [])]
    own = [m for m in mounts if m.get("target") == "/var/lib/chorus"]
    check(f"{name}: keeps its files in a named volume of its own",
          len(own) == 1 and own[0]["source"] in config.get("volumes", {}),
          str(own))
    party_volumes[name] = own[0]["source"]
    if name.startswith("node-"):
        node = command[1]
        check(f"{name}: node '{node}' is on the coordinator's roster",
              node in roster, str(roster))
        check(f"{name}: publishes and exposes no port (it dials out)",
              "ports" not in s and "expose" not in s)
        sets = [command[i + 1] for i, a in enumerate(command) if a == "--set"]
        args = [chorus, "node", "--print-config", "--config",
                os.path.join(src, "deploy/compose/node.toml"),
                "--set", f"node.name={node}"]
        for kv in sets:
            args += ["--set", kv]
        r = subprocess.run(args, capture_output=True, text=True)
        check(f"{name}: node.toml with its --set values is a valid config",
              r.returncode == 0, r.stderr.strip())
check("no two parties share a volume",
      len(set(party_volumes.values())) == len(party_volumes),
      str(party_volumes))
published = [(n, p) for n, s in services.items() for p in s.get("ports", [])]
check("the coordinator's port is the only one published",
      [n for n, _ in published] == ["coordinator"], str(published))
p = published[0][1]
check(f"... and it is coordinator.toml's port ({port})",
      int(p["target"]) == port and int(p["published"]) == port, str(p))
r = subprocess.run([chorus, "coordinator", "--print-config", "--config",
                    coordinator_toml], capture_output=True, text=True)
check("coordinator.toml is a valid config", r.returncode == 0, r.stderr.strip())
build = services["ca"].get("build", {})
check("the image is built from the project's Dockerfile",
      os.path.isfile(os.path.join(build.get("context", ""),
                                  build.get("dockerfile", "Dockerfile"))),
      str(build))

# The Dockerfile: two stages, every COPY source exists, the final stage runs
# as a user and holds no build tool.
dockerfile = open(os.path.join(src, "Dockerfile")).read()
stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
check("the Dockerfile has a build stage and a final stage", len(stages) == 2)
for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
    for source in line.split()[:-1]:
        check(f"Dockerfile: COPY source '{source}' exists",
              os.path.exists(os.path.join(src, source)))
final = stages[1]
check("the final stage runs as a non-root user",
      re.search(r"^USER (?!root)\w+", final, re.M) is not None)
check("the final stage installs no compiler or -dev package",
      not re.search(r"\b(g\+\+|cmake|ninja-build|[\w.+-]+-dev)\b", final))
check("the final stage copies only the binary from the build",
      re.findall(r"COPY --from=build (\S+)", final) ==
      ["/build/apps/chorus/chorus"])
install = open(os.path.join(src, "scripts/install-deps.sh")).read()
block = re.search(r"^packages=\((.*?)^\)", install, re.M | re.S).group(1)
block = "\n".join(line.split("#")[0] for line in block.splitlines())
listed = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", block))
build_packages = re.findall(r"[a-z0-9][a-z0-9.+-]+",
                            stages[0].split("--no-install-recommends")[1]
                            .split("&&")[0])
missing = [p for p in build_packages if p not in listed]
check("the build stage installs only packages install-deps.sh installs",
      not missing, str(missing))
for sub in re.findall(r'"\$chorus" ([a-z]+(?: [a-z]+)?)', open(entrypoint).read()):
    r = subprocess.run([chorus] + sub.split() + ["--help"], capture_output=True)
    check(f"entrypoint.sh: 'chorus {sub}' exists", r.returncode == 0)
print(f"{checks} checks passed")
