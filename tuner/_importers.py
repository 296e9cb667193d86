"""Import search spaces written for other tuners of this field.

- LLMServingTuner (``msserviceprofiler optimizer``) TOML: ``[[optimizer_config_field]]`` tables
  (also ``[[<engine>.target_field]]``) with ``name``, ``dtype``, ``min``, ``max``, ``value``,
  ``dtype_param``, ``constant`` and ``config_position``. dtypes map as: ``int``/``float``/
  ``bool``/``enum`` -> the same kinds; ``range`` -> an int stepping ``dtype_param`` from ``min`` to
  ``max``; ``ratio`` -> a tuned fraction ``<name>_ratio`` in ``[min, max]`` plus the derived field
  ``name = int(<name>_ratio * <dtype_param>)``; ``factories`` -> the derived field
  ``name = int(product / target_name)``; ``env`` (and ``min == max``, ``constant``) -> a fixed
  value. ``config_position`` goes to the space's ``targets``.
- auto-tuning-vllm YAML: ``parameters: {key: {name, enabled, options | range: {start, end,
  step} | min/max/step, type/data_type}}``; disabled parameters are left at the engine default;
  the vLLM flag (``name``) goes to ``targets`` as ``--name``.

Example:
    >>> space = import_space("tests/data/tuner/llmservingtuner_vllm.toml")  # doctest: +SKIP
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from servetune import ConfigError
from servetune.tuner._space import SearchSpace

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
    data = _read_toml(path)
    fields, source_key = _lst_fields(data, engine, path)
    params: dict = {}
    fixed: dict = {}
    derived: dict = {}
    targets: dict = {}
    for i, raw in enumerate(fields, start=1):
        where = f"{source_key}[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {where}: expected a table")
        fname = raw.get("name")
        if not isinstance(fname, str) or not fname:
            raise ConfigError(f"{path}: {where}: 'name' must be a non-empty string")
        where = f"{where} ({fname})"
        dtype = raw.get("dtype", "float")
        if dtype not in _LST_DTYPES:
            raise ConfigError(f"{path}: {where}: dtype must be one of {', '.join(_LST_DTYPES)}; "
                              f"got {dtype!r}")
        position = raw.get("config_position")
        if position:
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
            params[f"{fname}_ratio"] = {"type": "float", "low": float(low), "high": float(high),
                                        "help": f"{fname} as a fraction of {param_arg}"}
            derived[fname] = f"int({fname}_ratio * {param_arg})"
        elif dtype == "factories":
            if not isinstance(param_arg, dict) or not {"target_name", "product"} <= set(param_arg):
                raise ConfigError(f"{path}: {where}: factories needs dtype_param = "
                                  "{target_name = ..., product = ...}")
            cast = "float" if param_arg.get("dtype") == "float" else "int"
            derived[fname] = f"{cast}({param_arg['product']} / {param_arg['target_name']})"
    section = source_key.split(".")[0] if source_key.endswith(".target_field") else None
    engine_name = engine or section or _lst_engine(data) or "unknown"
    space = {"name": name or path.stem, "engine": engine_name, "params": params,
             "fixed": fixed, "derived": derived, "targets": targets,
             "description": f"imported from LLMServingTuner config {path.name}"}
    return SearchSpace.from_dict(space, source=str(path))


def import_auto_tuning_vllm(path: str | Path, *, name: str | None = None) -> SearchSpace:
    """A :class:`SearchSpace` from an auto-tuning-vllm study/parameter YAML."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    raw_params = (data or {}).get("parameters") if isinstance(data, dict) else None
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{path}: expected a 'parameters:' mapping of parameter specs")
    params: dict = {}
    targets: dict = {}
    for key, spec in raw_params.items():
        where = f"parameters.{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {where}: expected a mapping")
        if not spec.get("enabled", True):
            continue
        fname = str(key).replace("-", "_")
        flag = spec.get("name") or str(key).replace("_", "-")
        targets[fname] = f"--{flag}"
        kind = spec.get("data_type") or spec.get("type")
        if "options" in spec:
            options = spec["options"]
            if not isinstance(options, list) or len(options) < 2:
                raise ConfigError(f"{path}: {where}: 'options' must list at least 2 values")
            if all(isinstance(o, bool) for o in options):
                params[fname] = {"type": "bool"}
            else:
                params[fname] = {"type": "enum", "choices": options}
        elif "range" in spec or "min" in spec:
            rng = spec.get("range", spec)
            if not isinstance(rng, dict):
                raise ConfigError(f"{path}: {where}: 'range' must be {{start, end, step}}")
            start = rng.get("start", rng.get("min"))
            end = rng.get("end", rng.get("max"))
            step = rng.get("step")
            if start is None or end is None:
                raise ConfigError(f"{path}: {where}: a range needs start and end (or min and max)")
            is_int = (kind == "int" or (kind != "float" and all(
                isinstance(v, int) for v in (start, end, step or 1))))
            entry = {"type": "int" if is_int else "float", "low": start, "high": end}
            if step is not None:
                entry["step"] = step
            params[fname] = entry
        elif kind in ("boolean", "bool"):
            params[fname] = {"type": "bool"}
        else:
            raise ConfigError(f"{path}: {where}: no 'options', 'range' or min/max given (this "
                              "file relies on auto-tuning-vllm's schema defaults, which servetune "
                              "does not ship); write the values out")
    if not params:
        raise ConfigError(f"{path}: every parameter is disabled; nothing to tune")
    space = {"name": name or path.stem, "engine": "vllm", "params": params, "targets": targets,
             "description": f"imported from auto-tuning-vllm config {path.name}"}
    return SearchSpace.from_dict(space, source=str(path))


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
    data = _read_toml(path)
    if "params" in data:
        return "servetune"
    if "optimizer_config_field" in data or any(
            isinstance(v, dict) and "target_field" in v for v in data.values()):
        return "llmservingtuner"
    raise ConfigError(f"{path}: not a servetune space ([params]) nor an LLMServingTuner config "
                      "([[optimizer_config_field]]); pass the format explicitly")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None


def _lst_fields(data: dict, engine: str | None, path: Path) -> tuple[list, str]:
    if "optimizer_config_field" in data and engine is None:
        return list(data["optimizer_config_field"]), "optimizer_config_field"
    engines = [k for k, v in data.items() if isinstance(v, dict) and "target_field" in v]
    if engine is None:
        if len(engines) != 1:
            raise ConfigError(f"{path}: no [[optimizer_config_field]]; choose the engine's "
                              f"target_field list with engine= one of {engines}")
        engine = engines[0]
    if engine not in engines:
        raise ConfigError(f"{path}: no [[{engine}.target_field]]; found {engines}")
    return list(data[engine]["target_field"]), f"{engine}.target_field"


def _lst_engine(data: dict) -> str | None:
    section = data.get("optimizer_engine")
    return section.get("engine") if isinstance(section, dict) else None


def _num(value, dtype: str):
    return int(value) if dtype == "int" else float(value)
