"""The compiled simulation loop is cached on disk: a second process loads what the first stored.

Real subprocesses with their own numba cache directory; the assertions are on numba's own cache
statistics and files, never on timings (those are in ``benchmarks/sim_startup.py``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

from servetune.features import make_feature_set
from servetune.models._jit_cache import cached_entry, fingerprint, jit_cache_dir

TESTS = Path(__file__).resolve().parent

# One simulation in a fresh process; prints numba's cache statistics of the loop it ran.
_SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from _helpers_simulator import constant_step_model
from servetune.data import synthetic_workload
from servetune.models import forest_predict_row
from servetune.models._jit_cache import cached_entry
from servetune.tuner.simulator import _kernel, get_policy, simulate

model = constant_step_model(4.0)
result = simulate("vllm", {{}}, synthetic_workload("poisson:rate=20,n=60", seed=0), model, seed=0)
vllm = get_policy("vllm")
loop = cached_entry(_kernel._run_kernel, schedule=vllm.schedule, hook_init=vllm.hook_init,
                    step_hook=vllm.step_hook, feat_kernel=model.kernel,
                    predict_row=forest_predict_row)
stats = {{name: (sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
         for name, d in (("loop", loop), ("kernel", model.kernel))}}
print(json.dumps({{"stats": stats, "module": loop.py_func.__module__,
                  "completed": result.metrics["completed"],
                  "finish": [float(x) for x in result.finish_s]}}))
"""


def _run(cache_dir: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Cannot cache" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def test_second_process_loads_the_loop_from_the_cache(tmp_path):
    first = _run(tmp_path)
    second = _run(tmp_path)
    # the first process compiles and stores, the second loads (numba's own statistics)
    assert first["stats"] == {"loop": [0, 1], "kernel": [0, 1]}
    assert second["stats"] == {"loop": [1, 0], "kernel": [1, 0]}
    assert first["module"] == second["module"]
    assert second["completed"] == first["completed"] == 60
    assert second["finish"] == first["finish"]
    generated = tmp_path / "servetune" / f"{first['module']}.py"
    assert generated.is_file()
    # numba's index and object code of the loop, under NUMBA_CACHE_DIR
    assert list(tmp_path.rglob(f"{first['module']}.entry-*.nbi"))
    assert list(tmp_path.rglob(f"{first['module']}.entry-*.nbc"))


def test_cache_dir_follows_numba_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert jit_cache_dir() == tmp_path / "numba" / "servetune"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit_cache_dir() == tmp_path / "xdg" / "servetune" / "jit"


def _formulas_a(r, k):
    return (r[0] * 2.0, r[3] + r[4])


def _formulas_b(r, k):
    return (r[0] * 3.0, r[3] + r[4])


def test_a_changed_formula_gets_another_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    a = make_feature_set("cache_a", 1, {"x": 0, "tokens": 1}, _formulas_a)
    b = make_feature_set("cache_b", 1, {"x": 0, "tokens": 1}, _formulas_b)
    again = make_feature_set("cache_a", 1, {"x": 0, "tokens": 1}, _formulas_a)
    assert fingerprint(a.kernel) != fingerprint(b.kernel)
    assert fingerprint(a.kernel) == fingerprint(again.kernel)
    from servetune.models._compiled import _apply_kernel

    entry_a = cached_entry(_apply_kernel, kernel=a.kernel)
    entry_b = cached_entry(_apply_kernel, kernel=b.kernel)
    assert entry_a.py_func.__module__ != entry_b.py_func.__module__
    raw, knobs = np.arange(17, dtype=np.float64), np.zeros(5)
    out_a, out_b = np.empty(2, np.float32), np.empty(2, np.float32)
    entry_a(raw, knobs, out_a)
    entry_b(raw, knobs, out_b)
    assert out_a.tolist() == [0.0, 7.0] and out_b.tolist() == [0.0, 7.0]
    raw[0] = 1.0
    entry_a(raw, knobs, out_a)
    entry_b(raw, knobs, out_b)
    assert (out_a[0], out_b[0]) == (2.0, 3.0)


def test_the_fingerprint_is_the_same_in_another_process():
    script = ("from servetune.features import get_feature_set\n"
              "from servetune.models import forest_predict_row\n"
              "from servetune.models._jit_cache import fingerprint\n"
              "from servetune.tuner.simulator import _kernel\n"
              "print(fingerprint(_kernel._run_kernel, get_feature_set().kernel, "
              "forest_predict_row))")
    outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True, timeout=300).stdout.strip() for _ in range(2)}
    assert len(outputs) == 1 and len(outputs.pop()) == 64


_CACHED_MODULES = ("servetune.tuner.simulator._kernel", "servetune.tuner.simulator._state",
                   "servetune.tuner.simulator._forest", "servetune.tuner.simulator._transformers",
                   "servetune.tuner.simulator._vllm", "servetune.tuner.simulator._static",
                   "servetune.models._compiled")


def _imported_names(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    return {alias.asname or alias.name for node in tree.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


@pytest.mark.parametrize("module_name", _CACHED_MODULES)
def test_numba_cache_is_used_only_where_a_file_holds_all_the_code(module_name):
    """numba's ``cache=True`` checks the timestamp of the function's own file only: a cached
    function may read nothing (helper, constant) imported from another module."""
    module = importlib.import_module(module_name)
    imported = _imported_names(module)
    cached = [obj for obj in vars(module).values() if isinstance(obj, Dispatcher)
              and obj.py_func.__module__ == module_name and obj._cache.__class__.__name__
              != "NullCache"]
    for dispatcher in cached:
        code = dispatcher.py_func.__code__
        foreign = sorted(name for name in code.co_names if name in imported
                         and not isinstance(vars(module).get(name), type(numba)))
        assert not foreign, (f"{module_name}.{dispatcher.__name__} has cache=True but reads "
                             f"{', '.join(foreign)} from another module")


def test_without_a_writable_cache_dir_it_compiles_in_process(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocker / "numba"))
    assert jit_cache_dir() is None
    from servetune.models._compiled import _apply_kernel
    from servetune.models._jit_cache import bind_cached

    fs = make_feature_set("cache_c", 1, {"x": 0, "tokens": 1}, _formulas_b)
    assert cached_entry(_apply_kernel, kernel=fs.kernel) is None
    out = np.empty(2, np.float32)
    bind_cached(_apply_kernel, ("kernel",))(fs.kernel, np.ones(17), np.zeros(5), out)
    assert out.tolist() == [3.0, 2.0]
    assert not list(tmp_path.rglob("*.nbi"))


def test_every_feature_kernel_has_its_own_compiled_name():
    """numba names machine code by qualified name and a per-process counter; cached loops of two
    feature sets loaded into one process must not hold two kernels under one name."""
    from servetune.features._definitions import default_feature_registry

    registry = default_feature_registry()
    kernels = [registry.get(name).kernel for name in registry.names]
    names = {k.py_func.__qualname__ for k in kernels}
    assert len(names) == len(kernels)
    formulas = {k.py_func.__closure__[0].cell_contents.py_func.__qualname__ for k in kernels}
    assert len(formulas) >= len(kernels) - 1  # step_v3 selects from step_v2's formulas
