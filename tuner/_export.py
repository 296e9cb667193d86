"""A tuned configuration as the engine's own launch arguments.

Engines with a spec (``servetune.data.engines``) get their start command from it: ``vllm serve
MODEL --max-num-batched-tokens ...``, ``transformers serve MODEL --continuous-batching --cb-...``
(plus the ``ContinuousBatchingConfig`` keyword arguments, since ``transformers serve`` exposes
only some of them: ``serve_flags_cover_all`` says whether the command alone applies them all).
Spaces with ``targets`` (imported LLMServingTuner / auto-tuning-vllm spaces) place each field as a
``--flag``, an environment variable (``env``) or a dotted config-file position.

Example:
    >>> launch_args("vllm", {"max_num_seqs": 128, "tp": 2, "enable_chunked_prefill": False})["cli"]
    ['--max-num-seqs', '128', '--tensor-parallel-size', '2', '--no-enable-chunked-prefill']
"""

from __future__ import annotations

import shlex

from servetune.data.engines import ENGINES, get_engine

__all__ = ["launch_args"]


def launch_args(engine: str, config: dict, targets: dict | None = None,
                model: str = "MODEL") -> dict:
    """How to launch ``engine`` with ``config``.

    Keys that are no knob of the engine (a space's bookkeeping fields such as ``gpus``) are
    listed under ``unused``; so are knobs the engine's command line cannot take.

    Returns:
        ``{"engine", "cli": [args], "command": str, "env": {...}, "config_file": {...},
        "kwargs": {...}, "unused": [...], "serve_flags_cover_all": bool}``.
    """
    if targets:
        return _from_targets(engine, config, targets, model)
    spec = get_engine(engine)
    parts = spec.split(config)
    kwargs = spec.config_kwargs(config)
    command = (shlex.join(spec.launch_argv(config, model=model, unapplied="record"))
               if spec.program else "")
    return {"engine": spec.name, "cli": parts.flags, "command": command, "env": parts.env,
            "config_file": {}, "kwargs": kwargs, "unused": parts.unknown + parts.config_only,
            "serve_flags_cover_all": not parts.config_only}


def _program(engine: str) -> tuple[str, ...]:
    """The engine's launch program (``vllm serve``), or the engine's name for an unknown one."""
    if engine in ENGINES and ENGINES[engine].program:
        return ENGINES[engine].program
    return (engine,)


def _flag(flag: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]]
    return [flag, str(value)]


def _from_targets(engine: str, config: dict, targets: dict, model: str) -> dict:
    cli: list[str] = []
    env: dict = {}
    tree: dict = {}
    unused = []
    for key, value in config.items():
        where = targets.get(key)
        if where is None:
            unused.append(key)
        elif where == "env":
            env[key] = str(value)
        elif where.startswith("--"):
            cli += _flag(where, value)
        else:
            node = tree
            *parents, leaf = where.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    prefix = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    program = _program(engine)
    command = " ".join(prefix + [shlex.join([*program, model, *cli])]) if cli or env else ""
    return {"engine": engine, "cli": cli, "command": command, "env": env, "config_file": tree,
            "kwargs": {}, "unused": unused}
