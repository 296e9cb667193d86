"""The README's cluster example is a valid cluster file (servetune's own parser reads it)."""

from __future__ import annotations

import re
from pathlib import Path

from servetune.tuner.hardware import load_cluster

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_cluster_example_parses(tmp_path):
    text = README.read_text()
    block = re.search(r"<!-- cluster-example -->\s*```toml\n(.*?)```", text, re.S)
    assert block, "README.md has no <!-- cluster-example --> TOML block"
    path = tmp_path / "cluster.toml"
    path.write_text(block.group(1))
    spec = load_cluster(str(path))
    assert [g.name for g in spec.groups] == ["node-a", "node-b"]
    assert spec.engine == "vllm" and spec.model.endswith("Llama-3.1-8B-Instruct")
    assert all(g.nodes[0].user == "svc" and len(g.nodes[0].gpus) == 8 for g in spec.groups)
    assert spec.health_timeout_s == 900 and spec.ssh.trust_new_hosts is False
