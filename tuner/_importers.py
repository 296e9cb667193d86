"""Import search spaces written for other tuners of this field.

- LLMServingTuner (``msserviceprofiler optimizer``) TOML: ``[[optimizer_config_field]]`` tables,
  or an engine's ``[[<engine>.target_field]]`` list (``vllm``, ``mindie``, ``kubectl``) joined by
  its benchmark's list (``[[vllm_benchmark.target_field]]``, ``[[ais_bench.target_field]]``), as
  ``llmservingtuner/config/config.py`` reads them (jaspergu62/LLMServingTuner@694c57fb). The
  engine is inferred from the file: the one engine section with fields, else the benchmark's
  engine (``vllm_benchmark`` -> vLLM). Upper-case vLLM names (``MAX_NUM_SEQS``,
  ``MAX_NUM_BATCHED_TOKENS``: environment variables that upstream's ``vllm serve`` command reads
  as ``--max-num-seqs $MAX_NUM_SEQS``) become the vLLM knobs with their flags. Fields have
  ``name``, ``dtype``, ``min``, ``max``, ``value``,
  ``dtype_param``, ``constant`` and ``config_position``. dtypes map as: ``int``/``float``/
  ``bool``/``enum`` -> the same kinds; ``range`` -> an int stepping ``dtype_param`` from ``min`` to
  ``max``; ``ratio`` -> a tuned fraction ``<name>_ratio`` in ``[min, max]`` plus the derived field
  ``name = int(<name>_ratio * <dtype_param>)``; ``factories`` -> the derived field
  ``name = int(product / target_name)``; ``env`` (and ``min == max``, ``constant``) -> a fixed
  value. ``config_position`` goes to the space's ``targets``.
- auto-tuning-vllm YAML (openshift-psap/auto-tuning-vllm ``auto_tune_vllm/core/config.py``):
  ``parameters: {vllm_arg: {enabled, options | min/max/step | range: {start, end, step}}}``;
  ``min``/``max`` with a float is a float range, ``options: [true, false]`` a bool, a one-value
  ``options`` list a fixed value; ``type: environment`` (or ``env_var: true``) parameters and
  ``static_environment_variables`` are environment variables; ``static_parameters`` are fixed
  flags. Disabled parameters are left at the engine default. A flag is ``--`` plus the key with
  ``-`` for ``_`` (upstream's ``TrialConfig.vllm_args``), or ``--<name>`` when ``name`` is given.
  The space's engine is vLLM, so candidates launch as ``vllm serve MODEL ...``.

Example:
    >>> space = import_space("tests/data/tuner/llmservingtuner_vllm.toml")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from servetune import ConfigError
from servetune.tuner._space import SearchSpace, read_toml

__all__ = ["import_llmservingtuner", "import_auto_tuning_vllm", "import_space", "IMPORT_FORMATS"]

IMPORT_FORMATS = ("servetune", "llmservingtuner", "auto-tuning-vllm")
_LST_DTYPES = ("int", "float", "bool", "enum", "ratio", "range", "factories", "env")


def import_llmservingtuner(path: str | Path, *, engine: str | None = None,
                           name: str | None = None) -> SearchSpace:
    """A :class:`SearchSpace` from an LLMServingTuner ``config.toml``.

    Args:
        path: the TOML file.
        engine: which ``[[<engine>.target_field]]`` list to read when the file has several
            (``vllm``, ``mindie``); ``[[optimizer_config_field]]`` is read when present.
        name: the space name (default: the file stem).
    """
    path = Path(path)
    data = read_toml(path)
    engine_name, sources = _lst_sources(data, engine, path)
    params: dict = {}
    fixed: dict = {}
    derived: dict = {}
    targets: dict = {}
    renames = {raw["name"]: knob.name for _, _, raw in sources
               if isinstance(raw, dict) and isinstance(raw.get("name"), str)
               and engine_name == "vllm" and (knob := _vllm_knob(raw["name"])) is not None}
    for source_key, i, raw in sources:
        where = f"{source_key}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {where}: expected a table")
        fname = raw.get("name")
        if not isinstance(fname, str) or not fname:
            raise ConfigError(f"{path}: {where}: 'name' must be a non-empty string")
        where = f"{where} ({fname})"
        knob = _vllm_knob(fname) if fname in renames else None
        if knob is not None:
            fname = knob.name
        dtype = raw.get("dtype", "float")
        if dtype not in _LST_DTYPES:
            raise ConfigError(f"{path}: {where}: dtype must be one of {', '.join(_LST_DTYPES)}; "
                              f"got {dtype!r}")
        position = raw.get("config_position")
        if knob is not None and knob.flag:
            targets[fname] = knob.flag  # upstream: --max-num-seqs $MAX_NUM_SEQS
        elif position:
            targets[fname] = position
        low, high = raw.get("min", 0.0), raw.get("max", 100.0)
        param_arg = raw.get("dtype_param")
        constant = raw.get("constant")
        if constant is not None:
            fixed[fname] = constant
            continue
        if dtype == "env":
            if "value" not in raw:
                raise ConfigError(f"{path}: {where}: an env field needs a 'value'")
            fixed[fname] = raw["value"]
            continue
        if dtype in ("int", "float", "range", "ratio") and low == high:
            fixed[fname] = int(high) if dtype in ("int", "range") else float(high)
            continue
        if dtype in ("int", "float"):
            params[fname] = {"type": dtype, "low": _num(low, dtype), "high": _num(high, dtype)}
        elif dtype == "bool":
            params[fname] = {"type": "bool"}
        elif dtype == "enum":
            if not isinstance(param_arg, list) or len(param_arg) < 2:
                raise ConfigError(f"{path}: {where}: an enum needs dtype_param = [choices...]")
            params[fname] = {"type": "enum", "choices": list(param_arg)}
        elif dtype == "range":
            if not isinstance(param_arg, (int, float)) or param_arg <= 0:
                raise ConfigError(f"{path}: {where}: a range needs dtype_param = STEP (> 0); got "
                                  f"{param_arg!r}")
            params[fname] = {"type": "int", "low": int(low), "high": int(high),
                             "step": int(param_arg)}
        elif dtype == "ratio":
            if not isinstance(param_arg, str):
                raise ConfigError(f"{path}: {where}: a ratio needs dtype_param = 'OTHER_FIELD'")
            other = renames.get(param_arg, param_arg)
            params[f"{fname}_ratio"] = {"type": "float", "low": float(low), "high": float(high),
                                        "help": f"{fname} as a fraction of {other}"}
            derived[fname] = f"int({fname}_ratio * {other})"
        elif dtype == "factories":
            if not isinstance(param_arg, dict) or not {"target_name", "product"} <= set(param_arg):
                raise ConfigError(f"{path}: {where}: factories needs dtype_param = "
                                  "{target_name = ..., product = ...}")
            cast = "float" if param_arg.get("dtype") == "float" else "int"
            other = renames.get(param_arg["target_name"], param_arg["target_name"])
            derived[fname] = f"{cast}({param_arg['product']} / {other})"
    if not params:
        raise ConfigError(f"{path}: every field is fixed; nothing to tune")
    space = {"name": name or path.stem, "engine": engine_name, "params": params,
             "fixed": fixed, "derived": derived, "targets": targets,
             "description": f"imported from LLMServingTuner config {path.name}"}
    return SearchSpace.from_dict(space, source=str(path))


def import_auto_tuning_vllm(path: str | Path, *, name: str | None = None) -> SearchSpace:
    """A :class:`SearchSpace` (engine vLLM) from an auto-tuning-vllm study YAML."""
    path = Path(path)
    data = _read_yaml(path)
    raw_params = data.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{path}: expected a 'parameters:' mapping of parameter specs")
    params: dict = {}
    fixed: dict = {}
    targets: dict = {}
    for key, spec in raw_params.items():
        where = f"parameters.{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {where}: expected a mapping")
        if not spec.get("enabled", True):
            continue
        is_env = spec.get("env_var") is True or spec.get("type") == "environment"
        fname = str(key) if is_env else str(key).replace("-", "_")
        targets[fname] = "env" if is_env else f"--{spec.get('name') or str(key).replace('_', '-')}"
        entry = _atv_param(spec, f"{path}: {where}")
        if isinstance(entry, tuple):  # a one-value options list: a fixed knob
            fixed[fname] = entry[0]
        else:
            params[fname] = entry
    for section, env in (("static_parameters", False), ("static_environment_variables", True)):
        static = data.get(section) or {}
        if not isinstance(static, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of names to values")
        for key, value in static.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(f"{path}: {section}.{key}: expected a string, number or "
                                  f"boolean; got {type(value).__name__}")
            fname = str(key) if env else str(key).replace("-", "_")
            fixed[fname] = str(value) if env else value
            targets[fname] = "env" if env else f"--{str(key).replace('_', '-')}"
    if not params:
        raise ConfigError(f"{path}: no enabled parameter with two or more values; nothing to "
                          "tune")
    space = {"name": name or path.stem, "engine": "vllm", "params": params, "fixed": fixed,
             "targets": targets,
             "description": f"imported from auto-tuning-vllm config {path.name}"}
    return SearchSpace.from_dict(space, source=str(path))


def _atv_param(spec: dict, where: str):
    """One auto-tuning-vllm parameter as a space param, or ``(value,)`` for a fixed one."""
    kind = spec.get("data_type") or spec.get("type")
    if "options" in spec:
        options = spec["options"]
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{where}: 'options' must be a non-empty list")
        if len(options) == 1:
            return (options[0],)
        if sorted(options, key=repr) == [False, True] and all(
                isinstance(o, bool) for o in options):
            return {"type": "bool"}
        if len(set(map(repr, options))) != len(options):
            raise ConfigError(f"{where}: 'options' lists a value twice: {options}")
        return {"type": "enum", "choices": options}
    if "range" in spec or "min" in spec or "max" in spec:
        rng = spec.get("range", spec)
        if not isinstance(rng, dict):
            raise ConfigError(f"{where}: 'range' must be {{start, end, step}}")
        start = rng.get("start", rng.get("min"))
        end = rng.get("end", rng.get("max"))
        step = rng.get("step")
        for label, value in (("min", start), ("max", end), ("step", step)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise ConfigError(f"{where}: {label} must be a number; got {value!r}")
        if start is None or end is None:
            raise ConfigError(f"{where}: a range needs min and max (or range: {{start, end}}); "
                              "servetune does not ship auto-tuning-vllm's schema defaults")
        if start == end:
            return (start,)
        is_int = kind == "int" or (kind != "float" and all(
            isinstance(v, int) for v in (start, end, step if step is not None else 1)))
        entry = {"type": "int" if is_int else "float", "low": start, "high": end}
        if step is not None:
            entry["step"] = step
        return entry
    if kind in ("boolean", "bool"):
        return {"type": "bool"}
    raise ConfigError(f"{where}: no 'options', 'range' or min/max given (this file relies on "
                      "auto-tuning-vllm's schema defaults, which servetune does not ship); write "
                      "the values out")


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'parameters:' section")
    return data


def import_space(path: str | Path, fmt: str | None = None) -> SearchSpace:
    """A space from any known format; ``fmt`` is guessed from the file when omitted."""
    path = Path(path)
    if fmt is None:
        fmt = _guess_format(path)
    if fmt == "servetune":
        space = SearchSpace.from_toml(path)
    elif fmt == "llmservingtuner":
        space = import_llmservingtuner(path)
    elif fmt == "auto-tuning-vllm":
        space = import_auto_tuning_vllm(path)
    else:
        raise ConfigError(f"unknown space format {fmt!r}; expected one of "
                          f"{', '.join(IMPORT_FORMATS)}")
    space.check_feasible()  # an infeasible space or a bad expression fails before any work
    return space


def _guess_format(path: Path) -> str:
    if path.suffix in (".yaml", ".yml"):
        return "auto-tuning-vllm"
    data = read_toml(path)
    if "params" in data:
        return "servetune"
    if "optimizer_config_field" in data or any(
            isinstance(v, dict) and "target_field" in v for v in data.values()):
        return "llmservingtuner"
    raise ConfigError(f"{path}: not a servetune space ([params]) nor an LLMServingTuner config "
                      "([[optimizer_config_field]]); pass the format explicitly")


#: upstream ``Settings`` sections: engines (``-e``) and benchmarks (``-b``) with a target_field
_LST_ENGINES = ("vllm", "mindie", "kubectl")
_LST_BENCHMARKS = {"vllm_benchmark": "vllm", "ais_bench": None}


def _lst_list(data: dict, section: str, path: Path) -> list:
    table = data.get(section)
    fields = table.get("target_field", []) if isinstance(table, dict) else []
    if not isinstance(fields, list):
        raise ConfigError(f"{path}: {section}.target_field: expected an array of tables")
    return fields


def _lst_sources(data: dict, engine: str | None, path: Path) -> tuple[str, list]:
    """The engine and its ``(section.target_field, index, table)`` fields (engine, then
    benchmark), chosen as upstream does with ``-e ENGINE -b BENCHMARK``."""
    if "optimizer_config_field" in data and engine is None:
        fields = data["optimizer_config_field"]
        if not isinstance(fields, list):
            raise ConfigError(f"{path}: optimizer_config_field: expected an array of tables")
        engine = _lst_engine(data) or "unknown"
        return engine, [("optimizer_config_field", i, f) for i, f in enumerate(fields, 1)]
    lists = {k: _lst_list(data, k, path) for k, v in data.items()
             if isinstance(v, dict) and "target_field" in v}
    if not lists:
        raise ConfigError(f"{path}: no [[optimizer_config_field]] nor [[<engine>.target_field]] "
                          "tables")
    engines = [k for k in lists if k not in _LST_BENCHMARKS]
    if engine is None:
        with_fields = [k for k in engines if lists[k]]
        hinted = {_LST_BENCHMARKS.get(b) for b in lists if lists[b]} - {None}
        if len(with_fields) == 1 and not hinted - set(with_fields):
            engine = with_fields[0]
        elif not with_fields and len(hinted) == 1:
            engine = hinted.pop()
        elif len(hinted) == 1 and hinted <= set(with_fields):
            engine = next(iter(hinted))
        else:
            raise ConfigError(f"{path}: target_field lists for several engines {engines}; "
                              "choose one with engine=")
    if engine not in lists and engine not in _LST_ENGINES:
        raise ConfigError(f"{path}: no [[{engine}.target_field]]; found {sorted(lists)}")
    benchmarks = [b for b in _LST_BENCHMARKS if lists.get(b)]
    if len(benchmarks) > 1:  # both lists: the engine's own benchmark (vllm -> vllm_benchmark)
        benchmarks = [b for b in benchmarks if _LST_BENCHMARKS[b] == engine] or benchmarks[:1]
    sources = [(f"{section}.target_field", i, f)
               for section in (engine, *benchmarks)
               for i, f in enumerate(lists.get(section, []), 1)]
    if not sources:
        raise ConfigError(f"{path}: [[{engine}.target_field]] is empty and no benchmark "
                          "target_field list is given; nothing to tune")
    return engine, sources


def _vllm_knob(name: str):
    """The vLLM knob an LLMServingTuner field name spells (``MAX_NUM_SEQS``), else ``None``."""
    from servetune.data.engines import get_engine

    spec = get_engine("vllm")
    canonical = spec.spellings.get(name) or spec.spellings.get(name.lower())
    return spec.knob(canonical) if canonical else None


def _lst_engine(data: dict) -> str | None:
    section = data.get("optimizer_engine")
    return section.get("engine") if isinstance(section, dict) else None


def _num(value, dtype: str):
    return int(value) if dtype == "int" else float(value)
