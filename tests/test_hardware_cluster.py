"""Cluster specifications: node strings, hostfiles, TOML, and their error messages."""

from __future__ import annotations

import pytest

from servetune import ConfigError
from servetune.tuner.hardware import load_cluster, load_cluster_toml, parse_node_string


def test_node_string_groups_and_gpus():
    spec = parse_node_string("n0,n1:n2,n3", gpus_per_node=4, user="svc", port=2222)
    assert [g.name for g in spec.groups] == ["g0", "g1"]
    assert [n.host for n in spec.groups[1].nodes] == ["n2", "n3"]
    assert spec.groups[0].nodes[1].gpus == (0, 1, 2, 3)
    assert spec.groups[0].nodes[0].label == "svc@n0:2222"
    assert spec.groups[0].base_url == "http://n0:8000"


def test_node_string_with_user_and_local():
    spec = parse_node_string("alice@n0:local", port=2200)  # ':' separates groups, not ports
    assert spec.groups[0].nodes[0].user == "alice" and spec.groups[0].nodes[0].port == 2200
    assert spec.groups[1].head.is_local and spec.groups[1].base_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("text", ["n0,$(touch x)", "n0;rm", "", "n0,,n1"])
def test_node_string_refuses_odd_hosts(text):
    with pytest.raises(ConfigError, match="expected"):
        parse_node_string(text)


def test_hostfile_splits_into_groups(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nn0 slots=8\nn1\n\nroot@n2:2222  # comment\nn3\n")
    spec = load_cluster(str(hostfile), nodes_per_group=2, gpus_per_node=8)
    assert [[n.host for n in g.nodes] for g in spec.groups] == [["n0", "n1"], ["n2", "n3"]]
    assert spec.groups[1].head.user == "root" and spec.groups[1].head.port == 2222


def test_hostfile_that_does_not_split_names_the_flag(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("n0\nn1\nn2\n")
    with pytest.raises(ConfigError, match="do not split into groups of 2"):
        load_cluster(str(hostfile), nodes_per_group=2)


def test_hostfile_bad_line_names_file_and_line(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("n0\nn1:notaport\n")
    with pytest.raises(ConfigError, match=r"hosts, line 2: expected a port"):
        load_cluster(str(hostfile))


TOML = """
engine = "vllm"
model = "/models/m"
candidate_timeout_s = 900
retries = 1
env = { HF_HOME = "/data/hf" }
[ssh]
known_hosts = "/etc/servetune/known_hosts"
connect_timeout_s = 5
[defaults]
user = "svc"
work_dir = "/scratch/st"
[[service_groups]]
name = "big"
service_port = 9000
health_url = "http://n0:9000/health"
env = { NCCL_DEBUG = "WARN" }
nodes = [{ host = "n0", gpus = [0, 1, 2, 3] }, { host = "n1", port = 2222, gpus = [0, 1, 2, 3] }]
[[service_groups]]
start_script = "/opt/start.sh"
nodes = [{ host = "n2", user = "other", key = "/keys/id" }]
"""


def test_toml_cluster(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(TOML)
    spec = load_cluster_toml(path)
    assert spec.engine == "vllm" and spec.model == "/models/m" and spec.retries == 1
    assert spec.candidate_timeout_s == 900.0 and spec.env == {"HF_HOME": "/data/hf"}
    assert spec.ssh.known_hosts == "/etc/servetune/known_hosts"
    assert spec.ssh.connect_timeout_s == 5.0 and spec.ssh.trust_new_hosts is False
    big, second = spec.groups
    assert big.name == "big" and big.health == "http://n0:9000/health"
    assert big.nodes[1].port == 2222 and big.nodes[1].user == "svc"
    assert big.nodes[0].work_dir == "/scratch/st" and big.nodes[1].gpus == (0, 1, 2, 3)
    assert second.name == "g1" and second.start_script == "/opt/start.sh"
    assert second.head.user == "other" and second.head.key == "/keys/id"
    overridden = load_cluster(str(path), retries=4, engine=None)
    assert overridden.retries == 4 and overridden.engine == "vllm"


@pytest.mark.parametrize("snippet, message", [
    ("[[service_groups]]\nnodes = [{ host = 'n0', port = 'x' }]", r"nodes\[0\]\.port: expected a port"),
    ("[[service_groups]]\nnodes = [{ host = 'n0', gpus = ['a'] }]", r"nodes\[0\]\.gpus: expected a list"),
    ("[[service_groups]]\nnodes = [{ host = 'n0', colour = 1 }]", r"nodes\[0\]\.colour: unknown key"),
    ("[[service_groups]]\nnodes = []", r"service_groups\[0\]\.nodes: expected a list"),
    ("retries = 'two'\n[[service_groups]]\nnodes = [{ host = 'n0' }]", "retries: expected int"),
    ("[ssh]\ntrust_new_hosts = 'yes'\n[[service_groups]]\nnodes = [{ host = 'n0' }]",
     r"ssh\.trust_new_hosts: expected bool"),
    ("engine = 'vllm'", "service_groups: expected at least one"),
    ("[[service_groups]\n", "not valid TOML"),
    ("[[service_groups]]\nenv = { 'A B' = 'x' }\nnodes = [{ host = 'n0' }]", "environment variable"),
])
def test_toml_errors_name_file_and_key(tmp_path, snippet, message):
    path = tmp_path / "bad.toml"
    path.write_text(snippet)
    with pytest.raises(ConfigError, match=message) as info:
        load_cluster_toml(path)
    assert str(path) in str(info.value)
