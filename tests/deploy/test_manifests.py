#!/usr/bin/env python3
"""deploy.manifests: validates every manifest under docker/k8s/ offline (rules in k8slint.py; needs
python3-yaml), then shows that the validator refuses broken variants of the real manifests.

    test_manifests.py --source-dir REPO"""

import argparse
import copy
import glob
import json
import os
import sys
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8slint  # noqa: E402

ARGS = None


def load_all():
    root = os.path.join(ARGS.source_dir, "docker", "k8s")
    paths = sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)
                   + glob.glob(os.path.join(root, "**", "*.yml"), recursive=True))
    files = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            files[os.path.relpath(p, ARGS.source_dir)] = list(yaml.safe_load_all(f))
    return files


class RealManifests(unittest.TestCase):
    def test_both_patterns_exist(self):
        names = sorted(os.path.basename(f) for f in load_all())
        self.assertIn("sidecar.yaml", names)
        self.assertIn("gateway.yaml", names)

    def test_every_manifest_is_valid(self):
        problems = k8slint.validate(load_all(), ARGS.source_dir)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_kinds(self):
        files = load_all()
        kinds = {os.path.basename(f): sorted(d["kind"] for d in docs if d) for f, docs in files.items()}
        self.assertEqual(kinds["sidecar.yaml"], ["ConfigMap", "Deployment", "ServiceAccount"])
        self.assertEqual(kinds["gateway.yaml"],
                         ["ConfigMap", "Deployment", "Deployment", "Namespace", "NetworkPolicy",
                          "NetworkPolicy", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"])


class ValidatorRefusesMistakes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = load_all()
        cls.side = next(f for f in cls.files if f.endswith("sidecar.yaml"))
        cls.gate = next(f for f in cls.files if f.endswith("gateway.yaml"))

    def docs(self, which):
        return copy.deepcopy(self.files[which])

    @staticmethod
    def find(docs, kind, name=None):
        return next(d for d in docs if d and d["kind"] == kind and (name is None or d["metadata"]["name"] == name))

    @staticmethod
    def guard(dep):
        return next(c for c in dep["spec"]["template"]["spec"]["containers"] if "aoai-guard" in c["image"])

    def assertProblem(self, which, docs, fragment):
        files = {which: docs}
        got = k8slint.validate(files, ARGS.source_dir)
        self.assertTrue(any(fragment in p for p in got), "%r not in %s" % (fragment, got))

    def assertClean(self, which, docs):
        self.assertEqual(k8slint.validate({which: docs}, ARGS.source_dir), [])

    def edit_config(self, docs, fn):
        cm = self.find(docs, "ConfigMap")
        cfg = json.loads(cm["data"]["config.json"])
        fn(cfg)
        cm["data"]["config.json"] = json.dumps(cfg)

    def test_unchanged_copies_are_clean(self):
        self.assertClean(self.side, self.docs(self.side))
        self.assertClean(self.gate, self.docs(self.gate))

    def test_structure(self):
        d = self.docs(self.gate)
        self.find(d, "Deployment", "aoai-guard")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "x"
        self.assertProblem(self.gate, d, "does not match the pod template labels")
        d = self.docs(self.gate)
        self.find(d, "Deployment", "aoai-guard")["apiVersion"] = "apps/v1beta1"
        self.assertProblem(self.gate, d, "unknown apiVersion/kind apps/v1beta1/Deployment")
        d = self.docs(self.gate)
        del self.find(d, "Service", "aoai-guard")["metadata"]["name"]
        self.assertProblem(self.gate, d, "metadata.name is required")
        d = self.docs(self.side)
        self.find(d, "Deployment")["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] = True
        self.assertProblem(self.side, d, "must be a string (quote it)")
        d = self.docs(self.gate)
        d.append(copy.deepcopy(self.find(d, "Service", "aoai-guard")))
        self.assertProblem(self.gate, d, "defined twice")

    def test_containers(self):
        d = self.docs(self.gate)
        del self.guard(self.find(d, "Deployment", "aoai-guard"))["image"]
        self.assertProblem(self.gate, d, "image None is missing")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["image"] = "contoso.azurecr.io/aoai-guard:latest"
        self.assertProblem(self.gate, d, "must be pinned")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["readinessProbe"]["httpGet"]["port"] = "metrics"
        self.assertProblem(self.gate, d, "readinessProbe port 'metrics' is not a declared containerPort")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["livenessProbe"]["httpGet"]["path"] = "/live"
        self.assertProblem(self.gate, d, "livenessProbe must GET /healthz on the admin port 9901")
        d = self.docs(self.side)
        self.guard(self.find(d, "Deployment"))["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 9901}}
        self.assertProblem(self.side, d, "is not a declared containerPort")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["volumeMounts"].append(
            {"name": "state", "mountPath": "/etc/aoai-guard/spool"})
        self.assertProblem(self.gate, d, "is mounted inside the read-only volume at /etc/aoai-guard")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["volumeMounts"][0]["name"] = "nope"
        self.assertProblem(self.gate, d, "volumeMount nope names no volume")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["resources"]["requests"]["cpu"] = "a lot"
        self.assertProblem(self.gate, d, "resources.requests.cpu='a lot' is invalid")

    def test_security_context(self):
        for key, value, fragment in (("readOnlyRootFilesystem", False, "readOnlyRootFilesystem must be true"),
                                     ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation must be false"),
                                     ("capabilities", {"drop": ["NET_RAW"]}, "capabilities.drop must contain ALL"),
                                     ("runAsUser", 0, "runAsUser 0 differs")):
            d = self.docs(self.side)
            self.guard(self.find(d, "Deployment"))["securityContext"][key] = value
            self.assertProblem(self.side, d, fragment)
        d = self.docs(self.gate)
        del self.find(d, "Deployment", "aoai-guard")["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]
        self.assertProblem(self.gate, d, "seccompProfile must be RuntimeDefault")
        d = self.docs(self.gate)
        dep = self.find(d, "Deployment", "aoai-guard")
        del dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
        self.assertClean(self.gate, copy.deepcopy(d))  # the container still says it
        del self.guard(dep)["securityContext"]["runAsNonRoot"]
        self.assertProblem(self.gate, d, "runAsNonRoot must be true")

    def test_service_pdb_netpol(self):
        d = self.docs(self.gate)
        self.find(d, "Service", "aoai-guard")["spec"]["ports"][0]["targetPort"] = "http"
        self.assertProblem(self.gate, d, "targetPort 'http' is not a containerPort")
        d = self.docs(self.gate)
        self.find(d, "Service", "aoai-guard")["spec"]["type"] = "LoadBalancer"
        self.assertProblem(self.gate, d, "a LoadBalancer must be internal")
        self.find(d, "Service", "aoai-guard")["metadata"]["annotations"] = {
            "service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
        self.assertClean(self.gate, d)
        d = self.docs(self.gate)
        self.find(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "other"}
        self.assertProblem(self.gate, d, "matches no Deployment's pods")
        d = self.docs(self.gate)
        self.find(d, "PodDisruptionBudget")["spec"]["minAvailable"] = 3
        self.assertProblem(self.gate, d, "no pod could ever be evicted")
        d = self.docs(self.gate)
        egress = self.find(d, "NetworkPolicy", "aoai-guard")["spec"]["egress"]
        egress[:] = [r for r in egress if not any(p.get("port") == 53 for p in r.get("ports", []))]
        self.assertProblem(self.gate, d, "no NetworkPolicy egress to DNS")
        d = self.docs(self.gate)
        self.find(d, "NetworkPolicy", "aoai-guard")["spec"]["ingress"][0]["from"] = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
        self.assertProblem(self.gate, d, "ingress only from labelled namespaces")
        d = self.docs(self.gate)
        self.find(d, "NetworkPolicy", "aoai-guard")["spec"]["ingress"][0]["ports"][0]["port"] = 8080
        self.assertProblem(self.gate, d, "no NetworkPolicy admits the listener port 8443")
        d = self.docs(self.gate)
        d.remove(self.find(d, "PodDisruptionBudget"))
        self.assertProblem(self.gate, d, "gateway: no PodDisruptionBudget selects these pods")

    def test_config_agreement(self):
        d = self.docs(self.gate)
        self.find(d, "ConfigMap")["data"]["config.json"] = '{"workers": 1, "workers": 2}'
        self.assertProblem(self.gate, d, "not valid JSON: duplicate key workers")
        d = self.docs(self.gate)
        self.edit_config(d, lambda c: c.update(workers=4))
        self.assertProblem(self.gate, d, "differs from conf/gateway.json")
        d = self.docs(self.gate)
        self.find(d, "Deployment", "aoai-guard")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
        self.assertProblem(self.gate, d, "terminationGracePeriodSeconds 30 < preStop 5s + drain 25s + 5s margin")
        d = self.docs(self.side)
        self.edit_config(d, lambda c: c["listeners"][0].update(address="0.0.0.0"))
        self.assertProblem(self.side, d, "sidecar: 0.0.0.0:8080 must listen on 127.0.0.1 only")
        d = self.docs(self.side)
        self.edit_config(d, lambda c: c["upstreams"][0].update(url="${AOAI_URL}"))
        self.assertProblem(self.side, d, "config uses ${AOAI_URL} but container aoai-guard does not set it")
        d = self.docs(self.gate)
        self.edit_config(d, lambda c: c["rate_limits"]["store"].update(url="redis://cache.aoai-guard:6379"))
        self.assertProblem(self.gate, d, "names Service aoai-guard/cache, which is not defined")
        d = self.docs(self.gate)
        self.edit_config(d, lambda c: c["audit"].update(spool_dir="/srv/spool"))
        self.assertProblem(self.gate, d, "audit.spool_dir /srv/spool is not on a writable volume")
        d = self.docs(self.gate)
        self.edit_config(d, lambda c: c["listeners"][0]["tls"].update(cert_file="/certs/tls.crt"))
        self.assertProblem(self.gate, d, "cert_file /certs/tls.crt is on no volume")
        d = self.docs(self.gate)
        self.guard(self.find(d, "Deployment", "aoai-guard"))["volumeMounts"][0]["mountPath"] = "/etc/guard"
        self.assertProblem(self.gate, d, "no ConfigMap is mounted at /etc/aoai-guard/config.json")

    def test_identity_and_secrets(self):
        d = self.docs(self.side)
        del self.find(d, "ServiceAccount")["metadata"]["annotations"]
        self.assertProblem(self.side, d, "azure.workload.identity/client-id annotation")
        d = self.docs(self.side)
        del self.find(d, "Deployment")["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"]
        self.assertProblem(self.side, d, "needs the pod label azure.workload.identity/use")
        d = self.docs(self.side)
        pod = self.find(d, "Deployment")["spec"]["template"]["spec"]
        pod["volumes"].append({"name": "key", "secret": {"secretName": "aoai-key"}})
        self.assertProblem(self.side, d, "sidecar: no secrets")
        d = self.docs(self.gate)
        d.remove(self.find(d, "Deployment", "aoai-guard-redis"))
        self.assertProblem(self.gate, d, "no Redis Deployment")


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=1)


if __name__ == "__main__":
    main()
