#!/usr/bin/env python3
"""Offline structural validation of the Kubernetes manifests in docker/k8s/ (used by
test_manifests.py). Needs python3-yaml (Debian package python3-yaml).

Why not kubectl/kubeconform: Debian 12 has no kubeconform or kubeval, and its kubectl
(kubernetes-client 1.20) validates only against a live API server (`--dry-run=client` still downloads
the OpenAPI schema). So this checks what a schema would, for the kinds we use, plus what a schema
cannot: cross-references between objects and agreement with aoai-guard's own configuration.

validate(files, repo_dir) -> list of problems, each "file: Kind/name: message". files maps a file
name (its stem names the pattern: sidecar, gateway) to its list of YAML documents."""

import json
import math
import os
import re

KINDS = {
    ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Secret"),
    ("v1", "Service"), ("apps/v1", "Deployment"), ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
TOP_KEYS = {"apiVersion", "kind", "metadata", "spec", "data", "binaryData", "stringData", "type",
            "immutable"}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")
CPU = re.compile(r"[0-9]+m|[0-9]+(\.[0-9]+)?")
MEMORY = re.compile(r"[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?")
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                   r"(@sha256:[0-9a-f]{64})?")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
WI_ENV = {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"}
RUNTIME_UID = 65532            # USER of docker/Dockerfile
CONFIG_PATH = "/etc/aoai-guard/config.json"   # ENTRYPOINT of docker/Dockerfile
HEALTHCHECK_BIN = "/usr/local/bin/aoai-guard"
DEFAULT_DRAIN_MS = 30000
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _Ctx:
    def __init__(self, fname):
        self.fname = fname
        self.problems = []

    def add(self, obj, msg):
        kind = obj.get("kind", "?") if isinstance(obj, dict) else "?"
        name = ((obj.get("metadata") or {}).get("name", "?")) if isinstance(obj, dict) else "?"
        self.problems.append("%s: %s/%s: %s" % (self.fname, kind, name, msg))


def _ns(obj):
    return (obj.get("metadata") or {}).get("namespace")


def _name(obj):
    return (obj.get("metadata") or {}).get("name")


def _selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(dep):
    return ((dep.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def _pod_spec(dep):
    return ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}


def _is_guard(container):
    return "aoai-guard" in str(container.get("image", "")).rsplit("/", 1)[-1].split(":")[0]


def _strict_json(text):
    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError("duplicate key %s" % sorted(dup)[0])
        return dict(pairs)
    return json.loads(text, object_pairs_hook=no_dups,
                      parse_constant=lambda c: (_ for _ in ()).throw(ValueError("non-JSON " + c)))


def _port_of(container, port):
    """The containerPort a probe/service port designates in this container, or None."""
    for p in container.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return p.get("containerPort")
    return None


# ---- object checks -----------------------------------------------------------------------------

def _check_metadata(ctx, obj):
    md = obj.get("metadata")
    if not isinstance(md, dict) or not isinstance(md.get("name"), str):
        ctx.add(obj, "metadata.name is required")
        return
    name = md["name"]
    rx = DNS_LABEL if obj.get("kind") in ("Namespace", "Service") else DNS_SUBDOMAIN
    if not rx.fullmatch(name):
        ctx.add(obj, "metadata.name %r is not a valid DNS name" % name)
    if obj.get("kind") != "Namespace" and "namespace" in md and not DNS_LABEL.fullmatch(str(md["namespace"])):
        ctx.add(obj, "metadata.namespace %r is invalid" % md["namespace"])
    _check_labels(ctx, obj, md.get("labels"), "metadata.labels")
    for k, v in (md.get("annotations") or {}).items():
        if not isinstance(v, str):
            ctx.add(obj, "annotation %s must be a string (quote it), got %r" % (k, v))


def _check_labels(ctx, obj, labels, where):
    if labels is None:
        return
    if not isinstance(labels, dict):
        ctx.add(obj, "%s must be a mapping" % where)
        return
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_NAME.fullmatch(k):
            ctx.add(obj, "%s: invalid label key %r" % (where, k))
        if not isinstance(v, str):
            ctx.add(obj, "%s: label %s must be a string (quote it), got %r" % (where, k, v))
        elif not LABEL_VALUE.fullmatch(v):
            ctx.add(obj, "%s: invalid label value %r" % (where, v))


def _check_probe(ctx, obj, c, pname, probe):
    handlers = [h for h in HANDLERS if h in probe]
    if len(handlers) != 1:
        ctx.add(obj, "container %s: %s needs exactly one of %s" % (c.get("name"), pname, HANDLERS))
        return
    h = handlers[0]
    if h in ("httpGet", "tcpSocket", "grpc"):
        port = probe[h].get("port")
        if _port_of(c, port) is None:
            ctx.add(obj, "container %s: %s port %r is not a declared containerPort"
                    % (c.get("name"), pname, port))
        if h == "httpGet" and not str(probe[h].get("path", "")).startswith("/"):
            ctx.add(obj, "container %s: %s path must start with /" % (c.get("name"), pname))
    else:
        cmd = probe["exec"].get("command")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(x, str) for x in cmd):
            ctx.add(obj, "container %s: %s exec.command must be a list of strings" % (c.get("name"), pname))
    for k in ("periodSeconds", "timeoutSeconds", "failureThreshold", "initialDelaySeconds"):
        if k in probe and (not isinstance(probe[k], int) or probe[k] < 0):
            ctx.add(obj, "container %s: %s.%s must be a non-negative integer" % (c.get("name"), pname, k))


def _check_resources(ctx, obj, c):
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for k, v in (res.get(part) or {}).items():
            rx = CPU if k == "cpu" else MEMORY if k in ("memory", "ephemeral-storage") else None
            if rx is None or not rx.fullmatch(str(v)):
                ctx.add(obj, "container %s: resources.%s.%s=%r is invalid" % (c.get("name"), part, k, v))


def _effective(pod_sc, c_sc, key):
    return c_sc.get(key, pod_sc.get(key))


def _check_deployment(ctx, obj, objects):
    spec = obj.get("spec") or {}
    if "replicas" in spec and (not isinstance(spec["replicas"], int) or spec["replicas"] < 0):
        ctx.add(obj, "spec.replicas must be a non-negative integer")
    sel = (spec.get("selector") or {}).get("matchLabels")
    labels = _pod_labels(obj)
    _check_labels(ctx, obj, labels, "spec.template.metadata.labels")
    if not isinstance(sel, dict) or not sel:
        ctx.add(obj, "spec.selector.matchLabels is required")
    elif not _selects(sel, labels):
        ctx.add(obj, "spec.selector %s does not match the pod template labels %s" % (sel, labels))
    pod = _pod_spec(obj)
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        ctx.add(obj, "spec.template.spec.containers must be a non-empty list")
        return
    volumes = {}
    for v in pod.get("volumes") or []:
        if v.get("name") in volumes:
            ctx.add(obj, "duplicate volume %s" % v.get("name"))
        volumes[v.get("name")] = v
        cm = v.get("configMap")
        if cm is not None:
            target = objects.get(("ConfigMap", _ns(obj), cm.get("name")))
            if target is None:
                ctx.add(obj, "volume %s: ConfigMap %s is not defined" % (v.get("name"), cm.get("name")))
            else:
                for item in cm.get("items") or []:
                    if item.get("key") not in (target.get("data") or {}):
                        ctx.add(obj, "volume %s: ConfigMap %s has no key %s"
                                % (v.get("name"), cm.get("name"), item.get("key")))
    sa = pod.get("serviceAccountName")
    if sa and ("ServiceAccount", _ns(obj), sa) not in objects:
        ctx.add(obj, "serviceAccountName %s is not defined" % sa)
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        ctx.add(obj, "host namespaces are not allowed")
    names = set()
    pod_sc = pod.get("securityContext") or {}
    for c in containers:
        cname = c.get("name")
        if not isinstance(cname, str) or not DNS_LABEL.fullmatch(cname) or cname in names:
            ctx.add(obj, "container name %r is invalid or duplicate" % cname)
        names.add(cname)
        image = c.get("image")
        if not isinstance(image, str) or not IMAGE.fullmatch(image):
            ctx.add(obj, "container %s: image %r is missing or not a full reference" % (cname, image))
        elif image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
            ctx.add(obj, "container %s: image %s must be pinned to a tag or digest" % (cname, image))
        pnames, pnums = set(), set()
        for p in c.get("ports") or []:
            num, pn = p.get("containerPort"), p.get("name")
            if not isinstance(num, int) or not 1 <= num <= 65535 or num in pnums:
                ctx.add(obj, "container %s: containerPort %r invalid or duplicate" % (cname, num))
            pnums.add(num)
            if pn is not None and (not PORT_NAME.fullmatch(str(pn)) or pn in pnames):
                ctx.add(obj, "container %s: port name %r invalid (<= 15 chars) or duplicate" % (cname, pn))
            pnames.add(pn)
            if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                ctx.add(obj, "container %s: protocol %r" % (cname, p.get("protocol")))
            if "hostPort" in p:
                ctx.add(obj, "container %s: hostPort is not allowed" % cname)
        for pname in PROBES:
            if pname in c:
                _check_probe(ctx, obj, c, pname, c[pname] or {})
        pre = ((c.get("lifecycle") or {}).get("preStop"))
        if pre is not None and not any(h in pre for h in ("exec", "httpGet", "sleep")):
            ctx.add(obj, "container %s: preStop needs exec, httpGet or sleep" % cname)
        _check_resources(ctx, obj, c)
        mounts = []
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                ctx.add(obj, "container %s: volumeMount %s names no volume" % (cname, m.get("name")))
            mp = str(m.get("mountPath", ""))
            if not mp.startswith("/") or mp in [x.get("mountPath") for x in mounts]:
                ctx.add(obj, "container %s: mountPath %r invalid or duplicate" % (cname, mp))
            mounts.append(m)
        for m in mounts:
            v = volumes.get(m.get("name")) or {}
            if any(k in v for k in ("configMap", "secret", "projected")):
                for other in mounts:
                    if other is not m and str(other.get("mountPath", "")).startswith(m["mountPath"].rstrip("/") + "/"):
                        ctx.add(obj, "container %s: %s is mounted inside the read-only volume at %s"
                                % (cname, other["mountPath"], m["mountPath"]))
        for e in c.get("env") or []:
            if not isinstance(e.get("name"), str) or ("value" in e and not isinstance(e["value"], str)):
                ctx.add(obj, "container %s: env entries need a name and a string value" % cname)
        if _is_guard(c):
            c_sc = c.get("securityContext") or {}
            if _effective(pod_sc, c_sc, "runAsNonRoot") is not True:
                ctx.add(obj, "container %s: runAsNonRoot must be true" % cname)
            uid = _effective(pod_sc, c_sc, "runAsUser")
            if uid is not None and uid != RUNTIME_UID:
                ctx.add(obj, "container %s: runAsUser %s differs from the image's uid %d"
                        % (cname, uid, RUNTIME_UID))
            if c_sc.get("readOnlyRootFilesystem") is not True:
                ctx.add(obj, "container %s: readOnlyRootFilesystem must be true" % cname)
            if c_sc.get("allowPrivilegeEscalation") is not False:
                ctx.add(obj, "container %s: allowPrivilegeEscalation must be false" % cname)
            if "ALL" not in ((c_sc.get("capabilities") or {}).get("drop") or []):
                ctx.add(obj, "container %s: capabilities.drop must contain ALL" % cname)
            if c_sc.get("capabilities", {}).get("add"):
                ctx.add(obj, "container %s: no capability may be added" % cname)
            seccomp = (c_sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                ctx.add(obj, "container %s: seccompProfile must be RuntimeDefault" % cname)
            req = (c.get("resources") or {}).get("requests") or {}
            if "cpu" not in req or "memory" not in req:
                ctx.add(obj, "container %s: resources.requests needs cpu and memory" % cname)
            for pname in ("readinessProbe", "livenessProbe"):
                if pname not in c:
                    ctx.add(obj, "container %s: %s is required" % (cname, pname))


def _check_service(ctx, obj, deployments):
    spec = obj.get("spec") or {}
    sel = spec.get("selector")
    targets = [d for d in deployments if _ns(d) == _ns(obj) and _selects(sel or {}, _pod_labels(d))]
    if not targets:
        ctx.add(obj, "selector %s matches no Deployment's pods" % sel)
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "LoadBalancer", "NodePort"):
        ctx.add(obj, "type %r" % stype)
    if stype == "LoadBalancer":
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        if ann.get("service.beta.kubernetes.io/azure-load-balancer-internal") != "true":
            ctx.add(obj, "a LoadBalancer must be internal "
                         "(service.beta.kubernetes.io/azure-load-balancer-internal: \"true\")")
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        ctx.add(obj, "spec.ports must be a non-empty list")
        return
    for p in ports:
        if not isinstance(p.get("port"), int) or not 1 <= p["port"] <= 65535:
            ctx.add(obj, "port %r invalid" % p.get("port"))
        tp = p.get("targetPort", p.get("port"))
        for d in targets:
            if not any(_port_of(c, tp) for c in _pod_spec(d).get("containers") or []):
                ctx.add(obj, "targetPort %r is not a containerPort of Deployment %s" % (tp, _name(d)))


def _check_pdb(ctx, obj, deployments):
    spec = obj.get("spec") or {}
    if ("minAvailable" in spec) == ("maxUnavailable" in spec):
        ctx.add(obj, "exactly one of minAvailable and maxUnavailable")
    sel = (spec.get("selector") or {}).get("matchLabels")
    targets = [d for d in deployments if _ns(d) == _ns(obj) and _selects(sel or {}, _pod_labels(d))]
    if not targets:
        ctx.add(obj, "selector %s matches no Deployment's pods" % sel)
    for d in targets:
        dsel = (d.get("spec") or {}).get("selector", {}).get("matchLabels")
        if dsel != sel:
            ctx.add(obj, "selector %s differs from Deployment %s's selector %s" % (sel, _name(d), dsel))
        replicas = (d.get("spec") or {}).get("replicas", 1)
        if isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= replicas:
            ctx.add(obj, "minAvailable %d >= replicas %d of %s: no pod could ever be evicted"
                    % (spec["minAvailable"], replicas, _name(d)))


def _check_netpol(ctx, obj, deployments):
    spec = obj.get("spec") or {}
    sel = (spec.get("podSelector") or {}).get("matchLabels")
    if not any(_ns(d) == _ns(obj) and _selects(sel or {}, _pod_labels(d)) for d in deployments):
        ctx.add(obj, "podSelector %s matches no Deployment's pods" % sel)
    types = spec.get("policyTypes") or []
    if not set(types) <= {"Ingress", "Egress"} or not types:
        ctx.add(obj, "policyTypes %r" % types)
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            for peer in rule.get(peer_key) or []:
                if not set(peer) <= {"namespaceSelector", "podSelector", "ipBlock"} or not peer:
                    ctx.add(obj, "%s peer %r" % (direction, peer))
            for p in rule.get("ports") or []:
                if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP") or not isinstance(p.get("port"), (int, str)):
                    ctx.add(obj, "%s port %r" % (direction, p))


def _netpol_allows(netpols, dep, direction, port, protocol="TCP"):
    for np_ in netpols:
        spec = np_.get("spec") or {}
        if _ns(np_) != _ns(dep) or not _selects((spec.get("podSelector") or {}).get("matchLabels") or {},
                                                 _pod_labels(dep)):
            continue
        for rule in spec.get(direction) or []:
            ports = rule.get("ports")
            if not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
                return True
    return False


# ---- aoai-guard configuration checks ------------------------------------------------------------

def _env_refs(node):
    if isinstance(node, str):
        return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", node))
    if isinstance(node, dict):
        return set().union(*[_env_refs(v) for v in node.values()]) if node else set()
    if isinstance(node, list):
        return set().union(*[_env_refs(v) for v in node]) if node else set()
    return set()


def _mounted_config(dep, c, objects):
    """(ConfigMap, key) that provides CONFIG_PATH in container c, or (None, None)."""
    volumes = {v.get("name"): v for v in _pod_spec(dep).get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m.get("name")) or {}
        cm = v.get("configMap")
        if not cm:
            continue
        base = m.get("mountPath", "").rstrip("/")
        if m.get("subPath"):
            if base == CONFIG_PATH:
                return objects.get(("ConfigMap", _ns(dep), cm.get("name"))), m["subPath"]
            continue
        items = cm.get("items")
        cmap = objects.get(("ConfigMap", _ns(dep), cm.get("name")))
        if items:
            for it in items:
                if base + "/" + it.get("path", "") == CONFIG_PATH:
                    return cmap, it.get("key")
        elif cmap and CONFIG_PATH.startswith(base + "/"):
            return cmap, CONFIG_PATH[len(base) + 1:]
    return None, None


def _under_mount(c, path, writable):
    for m in c.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            return not (writable and m.get("readOnly"))
    return False


def _prestop_seconds(c):
    pre = (c.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0].endswith("/sleep") and cmd[1].isdigit():
        return int(cmd[1])
    return 0


def _check_guard_config(ctx, dep, c, cfg, objects, netpols, pattern):
    spec = _pod_spec(dep)
    env = {e.get("name") for e in c.get("env") or []}
    labels = _pod_labels(dep)
    wi = labels.get("azure.workload.identity/use") == "true"
    missing = _env_refs(cfg) - env - (WI_ENV if wi else set())
    if missing:
        ctx.add(dep, "config uses ${%s} but container %s does not set it" % (sorted(missing)[0], c["name"]))
    if (cfg.get("credential") or {}).get("type") in ("workload_identity", "default"):
        if not wi:
            ctx.add(dep, "credential workload_identity needs the pod label azure.workload.identity/use: \"true\"")
        sa = objects.get(("ServiceAccount", _ns(dep), spec.get("serviceAccountName")))
        cid = ((sa or {}).get("metadata") or {}).get("annotations", {}).get("azure.workload.identity/client-id")
        if not isinstance(cid, str) or not GUID.fullmatch(cid):
            ctx.add(dep, "workload identity needs a ServiceAccount with a GUID "
                         "azure.workload.identity/client-id annotation")
    admin = cfg.get("admin") or {}
    admin_port = admin.get("port", 9901)
    admin_loopback = admin.get("address") in LOOPBACK
    for pname, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = c.get(pname) or {}
        if "httpGet" in probe:
            if admin_loopback:
                ctx.add(dep, "%s: httpGet cannot reach an admin listener on %s; use exec --healthcheck"
                        % (pname, admin.get("address")))
            if probe["httpGet"].get("path") != path or _port_of(c, probe["httpGet"].get("port")) != admin_port:
                ctx.add(dep, "%s must GET %s on the admin port %s" % (pname, path, admin_port))
        elif "exec" in probe:
            want = [HEALTHCHECK_BIN, "--healthcheck", "http://127.0.0.1:%s%s" % (admin_port, path)]
            if probe["exec"].get("command") != want:
                ctx.add(dep, "%s must run %s" % (pname, " ".join(want)))
    for lst in cfg.get("listeners") or []:
        if lst.get("address") in LOOPBACK:
            continue
        if _port_of(c, lst.get("port")) is None:
            ctx.add(dep, "listener port %s is not a containerPort" % lst.get("port"))
        if netpols and not _netpol_allows(netpols, dep, "ingress", lst.get("port")):
            ctx.add(dep, "no NetworkPolicy admits the listener port %s" % lst.get("port"))
        tls = lst.get("tls") or {}
        for k in ("cert_file", "key_file", "client_ca_file"):
            if tls.get(k) and not _under_mount(c, tls[k], False):
                ctx.add(dep, "listener %s %s is on no volume" % (k, tls[k]))
    spool = (cfg.get("audit") or {}).get("spool_dir")
    if spool and not (spool.startswith("/") and _under_mount(c, spool, True)):
        ctx.add(dep, "audit.spool_dir %s is not on a writable volume (the root filesystem is read-only)"
                % spool)
    drain_ms = (cfg.get("shutdown") or {}).get("drain_timeout_ms", DEFAULT_DRAIN_MS)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    need = _prestop_seconds(c) + math.ceil(drain_ms / 1000) + 5
    if grace < need:
        ctx.add(dep, "terminationGracePeriodSeconds %s < preStop %ss + drain %ss + 5s margin"
                % (grace, _prestop_seconds(c), math.ceil(drain_ms / 1000)))
    store = ((cfg.get("rate_limits") or {}).get("store") or {})
    if store.get("type") == "redis":
        m = re.fullmatch(r"rediss?://(?:[^@/]*@)?([a-z0-9-]+)(?:\.([a-z0-9-]+))?[a-z0-9.-]*:([0-9]+)/?[0-9]*",
                         str(store.get("url", "")))
        if not m:
            ctx.add(dep, "rate_limits.store.url %r does not name a Service host:port" % store.get("url"))
        else:
            svc_name, svc_ns, port = m.group(1), m.group(2) or _ns(dep), int(m.group(3))
            svc = objects.get(("Service", svc_ns, svc_name))
            if svc is None:
                ctx.add(dep, "rate_limits.store.url names Service %s/%s, which is not defined" % (svc_ns, svc_name))
            elif not any(p.get("port") == port for p in (svc.get("spec") or {}).get("ports") or []):
                ctx.add(dep, "Service %s has no port %d" % (svc_name, port))
            if netpols and not _netpol_allows(netpols, dep, "egress", port):
                ctx.add(dep, "no NetworkPolicy egress to Redis port %d" % port)
    if netpols:
        if not _netpol_allows(netpols, dep, "egress", 53, "UDP"):
            ctx.add(dep, "no NetworkPolicy egress to DNS (53/UDP)")
        if not _netpol_allows(netpols, dep, "egress", 443):
            ctx.add(dep, "no NetworkPolicy egress to 443")
    if pattern == "sidecar":
        for lst in (cfg.get("listeners") or []) + [admin]:
            if lst and lst.get("address") not in LOOPBACK:
                ctx.add(dep, "sidecar: %s:%s must listen on 127.0.0.1 only" % (lst.get("address"), lst.get("port")))
        if len(spec.get("containers") or []) < 2:
            ctx.add(dep, "sidecar: the pod needs the application container next to aoai-guard")
    if pattern == "gateway":
        if (dep.get("spec") or {}).get("replicas") != 3:
            ctx.add(dep, "gateway: 3 replicas expected")
        found = {o.get("kind") for (kind, ns, _), o in objects.items()
                 if ns == _ns(dep) and _selects(_selector_of(o), labels)}
        for k in ("PodDisruptionBudget", "Service", "NetworkPolicy"):
            if k not in found:
                ctx.add(dep, "gateway: no %s selects these pods" % k)
        for np_ in netpols:
            if not _selects(_selector_of(np_), labels):
                continue
            for rule in (np_.get("spec") or {}).get("ingress") or []:
                peers = rule.get("from") or []
                if not peers:
                    ctx.add(np_, "gateway: an ingress rule without \"from\" admits everyone")
                for peer in peers:
                    if set(peer) != {"namespaceSelector"} or not peer["namespaceSelector"].get("matchLabels"):
                        ctx.add(np_, "gateway: ingress only from labelled namespaces (namespaceSelector."
                                     "matchLabels), not %s" % peer)


def _selector_of(o):
    spec = o.get("spec") or {}
    kind = o.get("kind")
    if kind == "Service":
        return spec.get("selector") or {}
    if kind == "PodDisruptionBudget":
        return (spec.get("selector") or {}).get("matchLabels") or {}
    if kind == "NetworkPolicy":
        return (spec.get("podSelector") or {}).get("matchLabels") or {}
    return {}


def validate(files, repo_dir):
    problems = []
    for fname, docs in sorted(files.items()):
        ctx = _Ctx(fname)
        pattern = os.path.splitext(os.path.basename(fname))[0]
        objects, namespaces = {}, set()
        docs = [d for d in docs if d is not None]
        if not docs:
            ctx.problems.append("%s: no objects" % fname)
        for d in docs:
            if not isinstance(d, dict):
                ctx.problems.append("%s: a document is not a mapping" % fname)
                continue
            if (d.get("apiVersion"), d.get("kind")) not in KINDS:
                ctx.add(d, "unknown apiVersion/kind %s/%s" % (d.get("apiVersion"), d.get("kind")))
            for k in set(d) - TOP_KEYS:
                ctx.add(d, "unknown top-level field %s" % k)
            _check_metadata(ctx, d)
            if d.get("kind") == "Namespace":
                namespaces.add(_name(d))
            key = (d.get("kind"), None if d.get("kind") == "Namespace" else _ns(d), _name(d))
            if key in objects:
                ctx.add(d, "defined twice")
            objects[key] = d
        nss = {_ns(d) for d in docs if isinstance(d, dict) and d.get("kind") != "Namespace"}
        if len(nss) > 1:
            ctx.problems.append("%s: objects spread over namespaces %s" % (fname, sorted(map(str, nss))))
        if namespaces and not nss <= namespaces:
            ctx.problems.append("%s: objects outside the Namespace defined here" % fname)
        deployments = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Deployment"]
        netpols = [d for d in docs if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"]
        for d in docs:
            if not isinstance(d, dict):
                continue
            kind = d.get("kind")
            if kind == "Deployment":
                _check_deployment(ctx, d, objects)
            elif kind == "Service":
                _check_service(ctx, d, deployments)
            elif kind == "PodDisruptionBudget":
                _check_pdb(ctx, d, deployments)
            elif kind == "NetworkPolicy":
                _check_netpol(ctx, d, deployments)
            elif kind == "ConfigMap":
                for k, v in (d.get("data") or {}).items():
                    if not isinstance(v, str):
                        ctx.add(d, "data.%s must be a string" % k)
                    elif k.endswith(".json"):
                        try:
                            _strict_json(v)
                        except ValueError as e:
                            ctx.add(d, "data.%s is not valid JSON: %s" % (k, e))
        guards = 0
        for dep in deployments:
            for c in _pod_spec(dep).get("containers") or []:
                if not _is_guard(c):
                    continue
                guards += 1
                cmap, key = _mounted_config(dep, c, objects)
                if cmap is None:
                    ctx.add(dep, "container %s: no ConfigMap is mounted at %s" % (c.get("name"), CONFIG_PATH))
                    continue
                try:
                    cfg = _strict_json((cmap.get("data") or {}).get(key, ""))
                except ValueError:
                    continue  # reported with the ConfigMap
                example = os.path.join(repo_dir, "conf", pattern + ".json")
                if os.path.isfile(example):
                    with open(example, encoding="utf-8") as f:
                        if _strict_json(f.read()) != cfg:
                            ctx.add(cmap, "the embedded config.json differs from conf/%s.json" % pattern)
                _check_guard_config(ctx, dep, c, cfg, objects, netpols, pattern)
        if guards == 0:
            ctx.problems.append("%s: no aoai-guard container" % fname)
        if pattern == "sidecar":
            for d in docs:
                if isinstance(d, dict) and (d.get("kind") == "Secret" or "secretKeyRef" in json.dumps(d)
                                            or '"secret":' in json.dumps(d)):
                    ctx.add(d, "sidecar: no secrets (the identity is the workload identity)")
        if pattern == "gateway":
            redis = [d for d in deployments if any("redis" in str(c.get("image", ""))
                                                   for c in _pod_spec(d).get("containers") or [])]
            if not redis:
                ctx.problems.append("%s: gateway: no Redis Deployment for the shared limits" % fname)
        problems += ctx.problems
    return problems
