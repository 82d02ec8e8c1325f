#!/usr/bin/env python3
"""deploy.dockerfile: lints docker/Dockerfile without a Docker engine (rules in dockerlint.py).

    test_dockerfile.py --source-dir REPO --binary BUILD/aoai-guard

The real Dockerfile must pass; the build packages come from REPO/scripts/install-deps.sh and the
runtime packages from the binary's shared libraries (ldd + dpkg -S). The linter itself is tested on
install scripts of several shapes and on broken variants of the real Dockerfile, each of which must be
refused for the right reason."""

import argparse
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dockerlint  # noqa: E402

ARGS = None

# A stand-in install script for the self-tests (the real one is checked in RealFiles).
FIXTURE_DEPS = """#!/bin/sh
set -eu
BUILD_PKGS="cmake gcc make pkg-config libevent-dev libssl-dev node-llhttp libcjson-dev
  libcurl4-openssl-dev libpcre2-dev zlib1g-dev libhiredis-dev"
apt-get update
apt-get install -y --no-install-recommends $BUILD_PKGS redis-server python3 python3-yaml
"""
FIXTURE_NEEDED = {"libhiredis0.14", "libevent-core-2.1-7", "libevent-extra-2.1-7", "libevent-openssl-2.1-7",
                  "libevent-pthreads-2.1-7", "libcjson1", "libcurl4", "libssl3", "libc6"}


def repo_path(*parts):
    return os.path.join(ARGS.source_dir, *parts)


def read_repo_file(rel):
    with open(repo_path(rel), encoding="utf-8") as f:
        return f.read()


class RealFiles(unittest.TestCase):
    """The Dockerfile in the tree against the install script and the binary in the build."""

    def test_dockerfile_passes_every_rule(self):
        deps_path = repo_path("scripts", "install-deps.sh")
        self.assertTrue(os.path.isfile(deps_path),
                        "%s is missing: the build stage must install exactly its packages" % deps_path)
        deps = dockerlint.install_deps_packages(read_repo_file("scripts/install-deps.sh"))
        self.assertTrue(deps[0], "no apt-get install found in scripts/install-deps.sh")
        self.assertTrue(os.path.isfile(ARGS.binary), "binary %s not built" % ARGS.binary)
        needed = set(dockerlint.needed_packages(ARGS.binary).values())
        problems = dockerlint.lint(read_repo_file("docker/Dockerfile"), deps, needed, read_repo_file)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_needed_packages_of_the_binary(self):
        pkgs = dockerlint.needed_packages(ARGS.binary)
        # Whatever else it links, the proxy links libevent's core and OpenSSL, and libc6 owns libc.
        self.assertEqual(pkgs.get("libc.so.6"), "libc6")
        self.assertEqual(pkgs.get("libevent_core-2.1.so.7"), "libevent-core-2.1-7")
        self.assertEqual(pkgs.get("libssl.so.3"), "libssl3")

    def test_needed_packages_refuses_a_non_elf(self):
        with self.assertRaises(RuntimeError):
            dockerlint.needed_packages(os.path.abspath(__file__))


class InstallScriptParsing(unittest.TestCase):
    def test_variable_string(self):
        build, everything = dockerlint.install_deps_packages(FIXTURE_DEPS)
        self.assertEqual(build, {"cmake", "gcc", "make", "pkg-config", "libevent-dev", "libssl-dev",
                                 "node-llhttp", "libcjson-dev", "libcurl4-openssl-dev", "libpcre2-dev",
                                 "zlib1g-dev", "libhiredis-dev"})
        self.assertEqual(everything - build, {"redis-server", "python3", "python3-yaml"})

    def test_arrays_comments_continuations_and_test_groups(self):
        script = """#!/bin/bash
# deps
LIBS=(
  cmake gcc   # the compiler
  libevent-dev
)
LIBS+=(zlib1g-dev)
readonly EXTRA="libssl-dev"
TEST_DEPS=(libfoo-test-dev)
SUDO=""
$SUDO apt-get update && $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y \\
    --no-install-recommends "${LIBS[@]}" $EXTRA "${TEST_DEPS[@]}" make=4.3-4.1 -o Dpkg::Options::=x \\
    redis-server >/dev/null 2>&1
echo "apt-get install not-a-package" > /dev/null
"""
        build, everything = dockerlint.install_deps_packages(script)
        self.assertEqual(build, {"cmake", "gcc", "libevent-dev", "zlib1g-dev", "libssl-dev", "make"})
        self.assertEqual(everything - build, {"libfoo-test-dev", "redis-server"})

    def test_named_build_group_wins(self):
        """The shape of scripts/install-deps.sh: groups in arrays, installed through a computed list."""
        script = """build_pkgs=(cmake make gcc
            libevent-dev)
test_pkgs=(redis-server python3)
want=("${build_pkgs[@]}")
for p in "${want[@]}"; do missing+=("$p"); done
apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
"""
        build, everything = dockerlint.install_deps_packages(script)
        self.assertEqual(build, {"cmake", "make", "gcc", "libevent-dev"})
        self.assertEqual(everything, build | {"redis-server", "python3"})

    def test_no_install(self):
        self.assertEqual(dockerlint.install_deps_packages("echo hi\n"), (set(), set()))


class LinterRefusesMistakes(unittest.TestCase):
    """Each broken variant of the real Dockerfile must produce the named problem."""

    @classmethod
    def setUpClass(cls):
        cls.text = read_repo_file("docker/Dockerfile")
        cls.deps = dockerlint.install_deps_packages(FIXTURE_DEPS)

    def problems(self, text, needed=None):
        return dockerlint.lint(text, self.deps, FIXTURE_NEEDED if needed is None else needed,
                               read_repo_file)

    def mutate(self, old, new, count=1):
        self.assertEqual(self.text.count(old), count, "fixture drifted: %r" % old)
        return self.text.replace(old, new)

    def assertProblem(self, text, fragment, needed=None):
        got = self.problems(text, needed)
        self.assertTrue(any(fragment in p for p in got), "%r not in %s" % (fragment, got))

    def test_fixture_is_clean(self):
        self.assertEqual(self.problems(self.text), [])

    def test_single_stage(self):
        start = self.text.index("FROM debian:12-slim AS build")
        end = self.text.index("FROM debian:12-slim\n")
        self.assertProblem(self.text[:start] + self.text[end:], "must be multi-stage")

    def test_unpinned_base(self):
        self.assertProblem(self.mutate("FROM debian:12-slim AS build", "FROM debian:latest AS build"),
                           "FROM debian:latest")
        self.assertProblem(self.mutate("FROM debian:12-slim\n", "FROM debian\n"), "FROM debian:")
        self.assertEqual(self.problems(self.mutate(
            "FROM debian:12-slim\n", "FROM debian:12.8-slim@sha256:" + "a" * 64 + "\n")), [])

    def test_wrong_target(self):
        self.assertProblem(self.mutate("--target aoai-guard", "--target all"), "--target aoai-guard")
        self.assertProblem(self.mutate("-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_BUILD_TYPE=Debug"),
                           "cmake -S . -B build")

    def test_build_packages_differ(self):
        self.assertProblem(self.mutate(" node-llhttp ", " "), "lacks packages of scripts/install-deps.sh: "
                                                               "node-llhttp")
        self.assertProblem(self.mutate(" zlib1g-dev ", " zlib1g-dev valgrind "),
                           "installs packages that scripts/install-deps.sh does not: valgrind")

    def test_runtime_packages_differ(self):
        self.assertProblem(self.mutate(" libcurl4 ", " "), "binary links: libcurl4")
        self.assertProblem(self.mutate(" libcjson1 ", " libcjson1 libzstd1 "),
                           "does not link: libzstd1")
        self.assertProblem(self.text, "binary links: libnghttp2-14",
                           needed=FIXTURE_NEEDED | {"libnghttp2-14"})
        self.assertProblem(self.mutate("      ca-certificates \\\n", ""), "must install ca-certificates")
        self.assertProblem(self.mutate(" libcjson1 ", " libcjson1 libssl-dev "), "build tool libssl-dev")

    def test_apt_hygiene(self):
        self.assertProblem(self.mutate(" -y --no-install-recommends", " -y", count=2),
                           "without --no-install-recommends")
        self.assertProblem(self.mutate(" \\\n && rm -rf /var/lib/apt/lists/* \\\n && groupadd",
                                       " \\\n && groupadd"), "keeps /var/lib/apt/lists")

    def test_user(self):
        self.assertProblem(self.mutate("USER 65532:65532\n", ""), "no USER")
        self.assertProblem(self.mutate("USER 65532:65532\n", "USER root\n"), "USER root")
        self.assertProblem(self.mutate("USER 65532:65532\n", "USER aoai-guard\n"), "numeric non-root")

    def test_healthcheck_and_entrypoint(self):
        hc = self.text[self.text.index("HEALTHCHECK"):self.text.index("ENTRYPOINT")]
        self.assertProblem(self.mutate(hc, ""), "no HEALTHCHECK")
        self.assertProblem(self.mutate("--healthcheck\",\"http://127.0.0.1:9901/healthz",
                                       "--healthcheck\",\"http://127.0.0.1:8080/healthz"),
                           "HEALTHCHECK CMD")
        self.assertProblem(self.mutate('"--config","/etc/aoai-guard/config.json"]',
                                       '"--config","/tmp/c.json"]'), "ENTRYPOINT")
        self.assertProblem(self.mutate('ENTRYPOINT ["/usr/local/bin/aoai-guard","--config","/etc/aoai-guard/config.json"]',
                                       "ENTRYPOINT /usr/local/bin/aoai-guard"), "exec (JSON array) form")

    def test_binary_volume_and_config(self):
        self.assertProblem(self.mutate("COPY --from=build /src/build/aoai-guard /usr/local/bin/aoai-guard",
                                       "COPY --from=build /src/build/aoai-guard /usr/bin/aoai-guard"),
                           "COPY --from=build")
        self.assertProblem(self.mutate('VOLUME ["/var/lib/aoai-guard"]', 'VOLUME ["/data"]'),
                           "VOLUME /var/lib/aoai-guard")
        self.assertProblem(self.mutate("install -d -o 65532 -g 65532", "install -d"),
                           "owned by uid 65532")
        self.assertProblem(self.mutate("COPY conf/sidecar.json", "COPY docker/Dockerfile"),
                           "default config docker/Dockerfile unreadable")


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--binary", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=1)


if __name__ == "__main__":
    main()
