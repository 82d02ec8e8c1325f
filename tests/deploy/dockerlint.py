#!/usr/bin/env python3
"""Lint rules for docker/Dockerfile, shared by test_dockerfile.py (no Docker engine needed).

lint(dockerfile_text, deps, runtime_needed, read_repo_file) returns a list of problems (empty: good):
  * multi-stage: a named build stage, then the runtime stage; every FROM is debian:12-slim (a pinned
    Debian major, optionally a point release or @sha256 digest; never :latest or untagged);
  * the build stage runs `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release` and
    `cmake --build build --target aoai-guard`, and installs exactly the build packages of
    scripts/install-deps.sh (deps: see install_deps_packages);
  * the runtime stage installs ca-certificates plus exactly the Debian packages of the shared libraries
    the binary links (runtime_needed: see needed_packages), no -dev package and no compiler;
  * every apt-get install uses --no-install-recommends and the runtime stage clears /var/lib/apt/lists;
  * the binary is copied from the build stage to /usr/local/bin/aoai-guard; USER is uid 65532 (numeric);
    VOLUME /var/lib/aoai-guard exists and is created owned by 65532;
  * HEALTHCHECK and ENTRYPOINT are the exact exec forms below, and the default config copied to
    /etc/aoai-guard/config.json puts the admin listener where the HEALTHCHECK looks.
"""

import json
import os
import re
import shlex
import subprocess

HEALTHCHECK = ["/usr/local/bin/aoai-guard", "--healthcheck", "http://127.0.0.1:9901/healthz"]
ENTRYPOINT = ["/usr/local/bin/aoai-guard", "--config", "/etc/aoai-guard/config.json"]
RUNTIME_UID = "65532"
BINARY = "/usr/local/bin/aoai-guard"
STATE_DIR = "/var/lib/aoai-guard"
BASE_IMAGE = re.compile(r"debian:12(?:\.[0-9]+)?-slim(?:@sha256:[0-9a-f]{64})?")
# Runtime packages that are not shared libraries of the binary.
RUNTIME_EXTRA = {"ca-certificates"}
# Libraries already in every debian:12-slim image (Priority: required, or needed by an essential
# package such as grep): listing them in the runtime stage is optional, whether the binary links them
# or not (zlib1g and libpcre2-8-0 are listed for the reader).
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libpcre2-8-0"}
# Sanitizer runtimes appear only in -DAG_SANITIZE/-DAG_TSAN builds; never in the image.
SANITIZER = re.compile(r"lib(?:asan|ubsan|tsan|lsan|hwasan)[0-9]+")
# Packages install-deps.sh may install for tests, fuzzing or benchmarks only: not for the build stage.
TEST_ONLY = re.compile(r"(?:python3(?:-.*)?|redis(?:-.*)?|clang(?:-[0-9]+)?|llvm(?:-.*)?|lld(?:-[0-9]+)?"
                       r"|libcmocka-dev|valgrind|gdb|lcov|gcovr|curl|git|ca-certificates|openssl|jq"
                       r"|procps|iproute2|netcat(?:-.*)?|ncat|socat|shellcheck|strace|ltrace|file"
                       r"|wrk|apache2-utils|nodejs|npm|kubectl|kubernetes-client)")
TEST_VARIABLE = re.compile(r"TEST|CHECK|BENCH|FUZZ|LINT|(?:^|_)CI(?:_|$)|DEBUG", re.IGNORECASE)
COMPILERS = {"gcc", "g++", "clang", "cmake", "make", "pkg-config", "build-essential"}


# ---- Dockerfile ----------------------------------------------------------------------------------

def parse_dockerfile(text):
    """[(KEYWORD, args, lineno)] with continuations joined and comments dropped."""
    out = []
    buf, start = None, 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip()
        stripped = line.lstrip()
        if stripped.startswith("#"):
            continue  # comments (also inside continuations) and parser directives
        if buf is None:
            if not stripped:
                continue
            buf, start = "", lineno
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip(), start))
        buf = None
    if buf is not None:
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip(), start))
    return out


def stages(instructions):
    """[{"image", "name", "line", "ins": [...]}], one per FROM."""
    result = []
    for kw, args, line in instructions:
        if kw == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = None
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2]
            result.append({"image": words[0] if words else "", "name": name, "line": line, "ins": [],
                           "words": words})
        elif result:
            result[-1]["ins"].append((kw, args, line))
    return result


def split_commands(shell):
    """Simple commands of a shell string, as token lists (operators && || ; | split them)."""
    lex = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    cmds, cur = [], []
    try:
        tokens = list(lex)
    except ValueError:
        return []
    for t in tokens:
        if t in ("&&", "||", ";", "|", "&", "(", ")", ";;"):
            if cur:
                cmds.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        cmds.append(cur)
    return cmds


def apt_install_args(cmd):
    """The package arguments when cmd is `[VAR=x ...] apt-get|apt install ...`, else None."""
    i = 0
    while i < len(cmd) and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[i])
                            or cmd[i] in ("sudo", "env", "command") or VAR_REF.fullmatch(cmd[i])):
        i += 1
    if i >= len(cmd) or os.path.basename(cmd[i]) not in ("apt-get", "apt"):
        return None
    rest = cmd[i + 1:]
    opts_with_value = {"-o", "-t", "-c", "--option", "--target-release", "--config-file"}
    args, seen_install, skip = [], False, False
    flags = []
    for t in rest:
        if skip:
            skip = False
            continue
        if t in opts_with_value:
            skip = True
            continue
        if t.startswith("-"):
            flags.append(t)
            continue
        if not seen_install:
            if t != "install":
                return None
            seen_install = True
            continue
        args.append(t)
    if not seen_install:
        return None
    return args, flags


def _strip_version(pkg):
    return re.sub(r"[=:].*$", "", pkg)


def stage_packages(stage):
    """(packages, problems) of the apt-get installs of one stage."""
    pkgs, problems = [], []
    for kw, args, line in stage["ins"]:
        if kw != "RUN":
            continue
        for cmd in split_commands(args):
            got = apt_install_args(cmd)
            if got is None:
                continue
            names, flags = got
            if "--no-install-recommends" not in flags:
                problems.append("line %d: apt-get install without --no-install-recommends" % line)
            pkgs.extend(_strip_version(n) for n in names)
    return pkgs, problems


def _exec_form(args, what, line, problems):
    try:
        v = json.loads(args)
    except ValueError:
        problems.append("line %d: %s is not in exec (JSON array) form" % (line, what))
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        problems.append("line %d: %s is not a JSON array of strings" % (line, what))
        return None
    return v


LINK_MODE_DEPENDENT = {"libevent-2.1-7"}


def lint(dockerfile_text, deps, runtime_needed, read_repo_file):
    """deps: (build_packages, all_packages) from install_deps_packages; runtime_needed: set of Debian
    packages of the binary's shared libraries (needed_packages); read_repo_file(path) -> text."""
    problems = []
    st = stages(parse_dockerfile(dockerfile_text))
    if len(st) < 2:
        return ["the Dockerfile must be multi-stage (build, then runtime); found %d stage(s)" % len(st)]
    for s in st:
        if not BASE_IMAGE.fullmatch(s["image"]):
            problems.append("line %d: FROM %s: every stage must start from debian:12-slim (pinned)"
                            % (s["line"], s["image"]))
    build, runtime = st[0], st[-1]
    if not build["name"]:
        problems.append("line %d: the build stage needs a name (FROM ... AS build)" % build["line"])

    # Build stage: cmake invocation and packages.
    runs = [args for kw, args, _ in build["ins"] if kw == "RUN"]
    cmake_cmds = [c for r in runs for c in split_commands(r) if c and c[0] == "cmake"]
    configure = [c for c in cmake_cmds if "-S" in c and "-B" in c]
    if not any(c[c.index("-S") + 1] == "." and c[c.index("-B") + 1] == "build"
               and "-DCMAKE_BUILD_TYPE=Release" in c for c in configure if c.index("-S") + 1 < len(c)
               and c.index("-B") + 1 < len(c)):
        problems.append("build stage: no `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release`")
    targets = [c[c.index("--target") + 1] for c in cmake_cmds
               if "--build" in c and "--target" in c and c.index("--target") + 1 < len(c)]
    if targets != ["aoai-guard"]:
        problems.append("build stage: must build exactly `cmake --build build --target aoai-guard`"
                        " (found targets %s)" % targets)
    build_pkgs, p = stage_packages(build)
    problems += p
    want_build, script_all = deps
    got = set(build_pkgs)
    if want_build - got:
        problems.append("build stage lacks packages of scripts/install-deps.sh: %s"
                        % " ".join(sorted(want_build - got)))
    if got - script_all:
        problems.append("build stage installs packages that scripts/install-deps.sh does not: %s"
                        % " ".join(sorted(got - script_all)))

    # Runtime stage: packages.
    rt_pkgs, p = stage_packages(runtime)
    problems += p
    rt = set(rt_pkgs)
    for extra in sorted(RUNTIME_EXTRA - rt):
        problems.append("runtime stage must install %s" % extra)
    libs = rt - RUNTIME_EXTRA - BASE_PACKAGES
    need = set(runtime_needed) - BASE_PACKAGES
    if need - libs:
        problems.append("runtime stage lacks packages of libraries the binary links: %s"
                        % " ".join(sorted(need - libs)))
    # libevent-2.1-7 (the all-in-one libevent) is NEEDED by some link modes (sanitizer builds keep
    # it, the Release build's --as-needed drops it); installing it is harmless either way.
    if libs - need - LINK_MODE_DEPENDENT:
        problems.append("runtime stage installs packages the binary does not link: %s"
                        % " ".join(sorted(libs - need - LINK_MODE_DEPENDENT)))
    for pkg in sorted(rt):
        if pkg.endswith("-dev") or pkg in COMPILERS:
            problems.append("runtime stage installs build tool %s" % pkg)
    rt_runs = [args for kw, args, _ in runtime["ins"] if kw == "RUN"]
    if rt_pkgs and not any("rm -rf /var/lib/apt/lists/*" in r for r in rt_runs):
        problems.append("runtime stage keeps /var/lib/apt/lists (rm -rf /var/lib/apt/lists/*)")

    # Runtime stage: binary, user, volume, healthcheck, entrypoint.
    copies = [a.split() for kw, a, _ in runtime["ins"] if kw == "COPY"]
    if not any(c and c[0] == "--from=" + (build["name"] or "0") and c[-1] == BINARY for c in copies):
        problems.append("runtime stage must COPY --from=%s the binary to %s" % (build["name"], BINARY))
    users = [(a, line) for kw, a, line in runtime["ins"] if kw == "USER"]
    if not users:
        problems.append("runtime stage has no USER: the container would run as root")
    else:
        user, line = users[-1]
        uid, _, gid = user.partition(":")
        if uid != RUNTIME_UID or (gid and not gid.isdigit()):
            problems.append("line %d: USER %s: must be the numeric non-root uid %s (uid[:gid])"
                            % (line, user, RUNTIME_UID))
    volumes = []
    for kw, a, line in runtime["ins"]:
        if kw == "VOLUME":
            v = json.loads(a) if a.startswith("[") else a.split()
            volumes += v
    if STATE_DIR not in volumes:
        problems.append("runtime stage must declare VOLUME %s (spool, logs)" % STATE_DIR)
    if not any(re.search(r"install -d\b.*-o %s\b.*%s|chown[^&;]*%s[^&;]*%s"
                         % (RUNTIME_UID, re.escape(STATE_DIR), RUNTIME_UID, re.escape(STATE_DIR)), r)
               for r in rt_runs):
        problems.append("%s must be created owned by uid %s" % (STATE_DIR, RUNTIME_UID))
    hcs = [(a, line) for s in st for kw, a, line in s["ins"] if kw == "HEALTHCHECK"]
    rt_hcs = [(a, line) for kw, a, line in runtime["ins"] if kw == "HEALTHCHECK"]
    if not rt_hcs:
        problems.append("runtime stage has no HEALTHCHECK")
    elif len(hcs) != 1:
        problems.append("exactly one HEALTHCHECK expected, found %d" % len(hcs))
    else:
        a, line = rt_hcs[0]
        m = re.search(r"(?:^|\s)CMD\s+(\[.*\])\s*$", a)
        if not m:
            problems.append("line %d: HEALTHCHECK must be `CMD [exec form]`" % line)
        else:
            v = _exec_form(m.group(1), "HEALTHCHECK CMD", line, problems)
            if v is not None and v != HEALTHCHECK:
                problems.append("line %d: HEALTHCHECK CMD %s, expected %s" % (line, v, HEALTHCHECK))
    eps = [(a, line) for kw, a, line in runtime["ins"] if kw == "ENTRYPOINT"]
    if not eps:
        problems.append("runtime stage has no ENTRYPOINT")
    else:
        a, line = eps[-1]
        v = _exec_form(a, "ENTRYPOINT", line, problems)
        if v is not None and v != ENTRYPOINT:
            problems.append("line %d: ENTRYPOINT %s, expected %s" % (line, v, ENTRYPOINT))
    if any(kw == "CMD" for kw, _, _ in runtime["ins"]):
        problems.append("runtime stage has a CMD: arguments belong in ENTRYPOINT")

    # The default configuration's admin listener is where the health check looks.
    cfg_copies = [c for c in copies if c and c[-1] == ENTRYPOINT[2] and not c[0].startswith("--from")]
    if len(cfg_copies) == 1 and len(cfg_copies[0]) == 2:
        try:
            cfg = json.loads(read_repo_file(cfg_copies[0][0]))
            admin = cfg.get("admin") or {}
            if admin.get("address") not in ("127.0.0.1", "0.0.0.0") or admin.get("port") != 9901:
                problems.append("%s: admin listener %s:%s is not where HEALTHCHECK looks "
                                "(127.0.0.1:9901)" % (cfg_copies[0][0], admin.get("address"),
                                                      admin.get("port")))
        except (OSError, ValueError) as e:
            problems.append("default config %s unreadable: %s" % (cfg_copies[0][0], e))
    return problems


# ---- scripts/install-deps.sh -----------------------------------------------------------------------

def _logical_lines(text):
    """Shell lines without comments, with continuations, multi-line "..." strings and multi-line (...)
    arrays joined."""
    out, buf = [], ""
    for raw in text.split("\n"):
        line = re.sub(r"(?:^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        quotes = len(re.findall(r'(?<!\\)"', re.sub(r"'[^']*'", "", buf)))
        if buf.count("(") > buf.count(")") or quotes % 2:
            buf += " "
            continue
        out.append(buf)
        buf = ""
    if buf:
        out.append(buf)
    return out


PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VAR_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?:\[[@*]\])?\}?")
ASSIGN = re.compile(r"\s*(?:(?:local|readonly|export|declare|typeset)(?:\s+-[A-Za-z]+)*\s+)?"
                    r"([A-Za-z_][A-Za-z0-9_]*)(\+?)=(\(.*\)|\S.*|)\s*$")


def _expand(words, variables):
    out = []
    for w in words:
        m = VAR_REF.fullmatch(w)
        out += variables.get(m.group(1), []) if m else [w]
    return out


def install_deps_packages(text):
    """(build_packages, all_packages) of an install script.

    Variables are read from assignments (NAME="a b", NAME=(a b), NAME+=(c), local/readonly/export/
    declare NAME=...), expanding $VAR / ${VAR} / ${ARR[@]}. When the script names its build packages in
    variables whose name contains "build" (build_pkgs=(...)), those are the build packages. Otherwise
    they are the arguments of every apt-get/apt install, less those coming from a variable named like
    TEST/CHECK/BENCH/FUZZ/LINT/CI/DEBUG and those matching TEST_ONLY. all_packages is every package
    the script names in an install command or in a variable named like *pkg*/*package*/*dep*."""
    variables = {}
    installs = []  # lists of (package, from_test_variable)
    for line in _logical_lines(text):
        m = ASSIGN.fullmatch(line)
        if m and not re.search(r"(?:&&|\|\||;)", m.group(3) if not m.group(3).startswith("(") else ""):
            name, append, value = m.groups()
            value = value[1:-1] if value.startswith("(") else value
            try:
                words = shlex.split(value, comments=True)
            except ValueError:
                continue
            if len(words) == 1 and not m.group(3).startswith("("):
                words = words[0].split()  # NAME="a b c"
            vals = _expand(words, variables)
            variables[name] = (variables.get(name, []) if append else []) + vals
            continue
        for cmd in split_commands(line):
            got = apt_install_args(cmd)
            if got is None:
                continue
            pkgs = []
            for arg in got[0]:
                ref = VAR_REF.fullmatch(arg)
                if ref:
                    test_var = bool(TEST_VARIABLE.search(ref.group(1)))
                    pkgs += [(p, test_var) for p in variables.get(ref.group(1), [])]
                else:
                    pkgs.append((arg, False))
            installs.append(pkgs)

    def is_pkg(p):
        return PACKAGE_NAME.fullmatch(_strip_version(p)) is not None

    named = {_strip_version(p) for k, vals in variables.items() for p in vals
             if is_pkg(p) and re.search(r"pkg|package|dep", k, re.IGNORECASE)}
    installed = {_strip_version(p) for pkgs in installs for p, _ in pkgs if is_pkg(p)}
    build_vars = [v for k, v in variables.items() if "build" in k.lower()]
    build_vals = {_strip_version(p) for vals in build_vars for p in vals if is_pkg(p)}
    if build_vals:
        build = build_vals
    else:
        build = {_strip_version(p) for pkgs in installs for p, t in pkgs
                 if is_pkg(p) and not t and not TEST_ONLY.fullmatch(_strip_version(p))}
    return build, (named | installed) if build_vals else installed


# ---- the binary ------------------------------------------------------------------------------------

def _run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def needed_packages(binary):
    """Debian packages providing the DT_NEEDED libraries of binary (resolved through ldd, mapped with
    dpkg -S). Raises RuntimeError naming what could not be resolved."""
    r = _run(["readelf", "-d", binary])
    if r.returncode != 0:
        raise RuntimeError("readelf -d %s failed: %s" % (binary, r.stderr.strip()))
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", r.stdout)
    if not needed:
        raise RuntimeError("%s has no NEEDED entries (static binary?)" % binary)
    r = _run(["ldd", binary])
    if r.returncode != 0:
        raise RuntimeError("ldd %s failed: %s" % (binary, r.stderr.strip()))
    paths = dict(re.findall(r"^\s*(\S+)\s+=>\s+(/\S+)\s+\(", r.stdout, re.MULTILINE))
    pkgs = {}
    for soname in needed:
        path = paths.get(soname)
        if not path:
            raise RuntimeError("ldd did not resolve %s" % soname)
        candidates = [path, os.path.realpath(path)]
        for c in list(candidates):
            candidates.append(c[4:] if c.startswith("/usr/") else "/usr" + c)
        pkg = None
        for c in candidates:
            d = _run(["dpkg", "-S", c])
            if d.returncode == 0 and d.stdout.strip():
                pkg = d.stdout.split(":", 1)[0].split(",")[0].strip()
                break
        if not pkg:
            raise RuntimeError("no Debian package owns %s (%s)" % (soname, path))
        if SANITIZER.fullmatch(pkg):
            continue
        pkgs[soname] = pkg
    return pkgs
