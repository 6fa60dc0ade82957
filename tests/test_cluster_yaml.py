"""cluster.yaml: Ray's own launcher validation + the security settings (no Ray started, no cloud).

`ray up` runs ``prepare_config`` (fill in the provider defaults, merge setup commands) and then
``validate_config`` (the JSON schema ray/autoscaler/ray-schema.json plus the launcher's own checks)
before it touches the cloud. The first tests run exactly those; the rest pin the security choices.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
SG_RULES = ROOT / "deployments" / "aws_security_group_ingress.json"
GRPC_PORT = 9000


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config
    return prepare_config(copy.deepcopy(raw))


def _schema() -> dict:
    import ray.autoscaler
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _pyproject_version() -> str:
    # (a regex, not tomllib: the project supports Python 3.10)
    return re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


# ---- Ray's own validation -------------------------------------------------------------------------

def test_raw_file_matches_ray_launcher_schema(raw):
    jsonschema.validate(raw, _schema())


def test_launcher_prepare_and_validate_accept_it(prepared):
    """What `ray up` runs before any cloud call (commands._bootstrap_config -> validate_config)."""
    from ray.autoscaler._private.util import validate_config
    validate_config(prepared)
    assert prepared["head_node_type"] == "ray.head"
    assert prepared["available_node_types"]["ray.head"]["max_workers"] == 0  # filled by the launcher


def test_the_schema_check_rejects_a_typo_and_a_bad_type(raw):
    """The same validation rejects a typo, so the passes above mean something."""
    from ray.autoscaler._private.util import validate_config
    bad = copy.deepcopy(raw)
    bad["idle_timeout_minute"] = 5              # typo'd key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _schema())
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


# ---- Node types and scaling -----------------------------------------------------------------------

def test_cpu_and_gpu_workers_autoscale_and_the_head_runs_no_work(raw):
    types = raw["available_node_types"]
    assert set(types) == {"ray.head", "ray.worker.cpu", "ray.worker.gpu"}
    assert types["ray.head"]["resources"] == {"CPU": 0}          # nothing scheduled on the head
    gpu = types["ray.worker.gpu"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["encoder"] >= 1
    assert "encoder" not in types["ray.worker.cpu"]["resources"]
    # the custom resource the batch pipeline's cluster test pins encoder actors with
    assert '"encoder": 1' in (ROOT / "tests" / "ray_cluster_check.py").read_text()
    for name in ("ray.worker.cpu", "ray.worker.gpu"):
        assert 1 <= types[name]["min_workers"] <= types[name]["max_workers"]
    assert sum(types[n]["max_workers"] for n in ("ray.worker.cpu", "ray.worker.gpu")) <= raw["max_workers"]
    assert raw["upscaling_speed"] > 0 and raw["idle_timeout_minutes"] > 0


def test_serve_gpu_stage_placement_matches_node_labels(raw):
    """serve_gpu.yaml's label selectors pick the CPU workers and never a GPU node (tests/test_failures.py
    runs the same placement on a simulated cluster)."""
    types = raw["available_node_types"]
    serve = yaml.safe_load((ROOT / "deployments" / "serve_gpu.yaml").read_text())
    for d in serve["applications"][0]["deployments"]:
        opts = d.get("ray_actor_options", {})
        if d["name"] == "Encoder":
            assert opts.get("num_gpus", 0) >= 1 and "label_selector" not in opts, d
            continue
        sel = opts.get("label_selector")
        assert sel, d                                         # every CPU-only stage is pinned
        matches = {n for n, t in types.items() if all(t.get("labels", {}).get(k) == v for k, v in sel.items())}
        assert matches == {"ray.worker.cpu"}, (d["name"], matches)


# ---- Security -------------------------------------------------------------------------------------

def _ray_start_commands(prepared) -> list[str]:
    cmds = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    return [c for c in cmds if "ray start" in c]


def test_token_auth_on_every_ray_start(prepared):
    starts = _ray_start_commands(prepared)
    assert len(starts) == 2                                    # head + workers
    for cmd in starts:
        # set in the same shell command, before `ray start`
        before = cmd.split("ray start")[0]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", before), cmd
        assert "RAY_AUTH_TOKEN=" not in cmd                    # never a token on a command line
    for cmd in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        if re.search(r"\bray (stop|start)\b", cmd):
            assert "RAY_AUTH_MODE=token" in cmd, cmd


def test_token_and_model_are_file_mounted(raw):
    mounts = raw["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"  # Ray's default token path, every node
    assert "~/seqguard/model" in mounts and "~/seqguard/wheels" in mounts
    assert raw["file_mounts_sync_continuously"] is False
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text)       # no secret inline


def test_dashboard_on_localhost_only(prepared):
    head = [c for c in _ray_start_commands(prepared) if "--head" in c]
    assert len(head) == 1
    args = shlex.split(head[0].replace(";", " "))
    assert "--dashboard-host=127.0.0.1" in args
    assert "0.0.0.0" not in CLUSTER_YAML.read_text().split("# ---- Starting Ray")[1]


def test_only_grpc_port_open_to_the_service_network(raw):
    types = raw["available_node_types"]
    groups = {tuple(t["node_config"]["SecurityGroupIds"]) for t in types.values()}
    assert len(groups) == 1, groups                            # every node: the same pre-created group
    (sg_ids,) = groups
    # no launcher-created group (it would add SSH 22 from 0.0.0.0/0)
    assert "security_group" not in raw["provider"]
    assert raw["provider"]["use_internal_ips"] is True

    rules = json.loads(SG_RULES.read_text())
    cidr_ports: dict[str, set[int]] = {}
    for r in rules:
        for rng in r.get("IpRanges", []) + r.get("Ipv6Ranges", []):
            cidr = rng.get("CidrIp") or rng.get("CidrIpv6")
            assert cidr not in ("0.0.0.0/0", "::/0"), r      # nothing open to the world
            assert r["IpProtocol"] == "tcp" and r["FromPort"] == r["ToPort"], r
            cidr_ports.setdefault(cidr, set()).add(r["FromPort"])
        for pair in r.get("UserIdGroupPairs", []):
            assert pair["GroupId"] in sg_ids, r                # "all traffic" only from the cluster itself
        assert r.get("IpRanges") or r.get("Ipv6Ranges") or r.get("UserIdGroupPairs"), r
    service = [c for c, ports in cidr_ports.items() if GRPC_PORT in ports]
    assert len(service) == 1 and cidr_ports[service[0]] == {GRPC_PORT}   # service network: 9000 only
    others = {p for c, ports in cidr_ports.items() if c != service[0] for p in ports}
    assert others <= {22}                                      # admin SSH (ray up / ray dashboard) only
    assert all(c != service[0] for c, ports in cidr_ports.items() if 22 in ports)


# ---- Same software on every node ------------------------------------------------------------------

def test_same_seqguard_and_ray_version_on_every_node(prepared):
    import ray
    version = _pyproject_version()
    per_node = {"head": prepared["head_setup_commands"], "worker": prepared["worker_setup_commands"]}
    for t in prepared["available_node_types"].values():
        assert "worker_setup_commands" not in t and "setup_commands" not in t  # no per-type overrides
    found = {}
    for node, cmds in per_node.items():
        text = "\n".join(cmds)
        sg = re.findall(r"seqguard[_-]ray(?:==|-)([0-9][^-\s\"']*)", text)
        rv = re.findall(r"ray\[[^\]]*\]==([0-9.]+)", text)
        assert sg and rv, (node, cmds)
        found[node] = (set(sg), set(rv))
    assert found["head"] == found["worker"] == ({version}, {ray.__version__}), found
