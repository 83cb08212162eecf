"""Config files: loading them (`load_config`, with the fields the dataset determines filled in),
their fields' help from the comments of configs/default.py, and the `ConfigError` of a bad field.

A leaf: it imports only ml_collections, the standard library and the dataset table. Validation
of a config is `validation.validate`.
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import re
import runpy
import tokenize
from typing import Any

import ml_collections

from cfg_jax.data import specs
from cfg_jax.errors import UserError


class ConfigError(UserError, ValueError):
  """A config field has an invalid value; the message names the field and the fix."""


def read_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, as `--config=path:arg` reads it."""
  return runpy.run_path(path)["get_config"](arg)


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`read_config` with the dataset's fields filled in (as cfg_jax.main gets it)."""
  return fill_dataset_fields(read_config(path, arg))


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
  """None if `path` (e.g. 'training.batch_size') names a field of `config`, else the message
  for it, naming the section and the closest field: 'training.bacth_size: no such field; did you
  mean training.batch_size?'."""
  node, found, keys = config, [], path.split(".")
  for i, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{path}: no such field; {'.'.join(found)} is a value, not a section."
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      section = ".".join(found) or "the config"
      hint = (
        f"did you mean {'.'.join(found + close + keys[i + 1 :])}?"
        if close
        else f"the fields of {section} are {', '.join(node.keys())}."
      )
      return f"{path}: no such field; {hint}"
    node, found = node[key], found + [key]
  return None


def default_config_path(config_path: str) -> str:
  """configs/default.py, beside the config file at `config_path` (every config builds on it)."""
  return os.path.join(os.path.dirname(os.path.abspath(config_path)), "default.py")


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'section.key': value} of every field of `config`, in its order."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _attribute_path(node: ast.expr) -> str | None:
  """'training.batch_size' of the assignment target `c.training.batch_size`."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  return ".".join(reversed(names)) if isinstance(node, ast.Name) and names else None


def field_help(default_path: str) -> dict[str, str]:
  """{'section.key': one-line help} from the comments of configs/default.py: a field's help is
  the comment at the end of its assignment, or else the comment lines right above it."""
  with open(default_path) as f:
    source = f.read()
  lines = source.splitlines()
  comments = {
    tok.start[0]: tok.string.lstrip("#").strip()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
    if tok.type == tokenize.COMMENT
  }
  out = {}
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    path = _attribute_path(node.targets[0])
    if path is None:
      continue
    if node.end_lineno in comments and not lines[node.end_lineno - 1].lstrip().startswith("#"):
      out[path] = comments[node.end_lineno]
      continue
    above, n = [], node.lineno - 1
    while n in comments and lines[n - 1].lstrip().startswith("#"):
      above.insert(0, comments[n])
      n -= 1
    if above:
      out[path] = " ".join(above)
  return out


def changed_fields(
  config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
) -> dict[str, Any]:
  """{'section.key': value} of the fields of `config` whose value differs from `defaults`
  (those the dataset fills, None in `defaults`, are left out)."""
  base = leaves(defaults)
  return {
    k: v
    for k, v in leaves(config).items()
    if k not in base or (base[k] is not None and v != base[k])
  }


def describe(config: ml_collections.ConfigDict, *, default_path: str) -> str:
  """Every field of `config` as `section.key = value  # help` lines, the help from the comments
  of `default_path` (configs/default.py), with the default where the value differs from it."""
  defaults = leaves(read_config(default_path))
  helps = field_help(default_path)
  changed = changed_fields(config, read_config(default_path))
  rows = []
  for path, value in leaves(config).items():
    note = f" (default: {defaults[path]!r})" if path in changed and path in defaults else ""
    rows.append(f"{path} = {value!r}  # {helps.get(path, '(no help)')}{note}")
  return "\n".join(rows) + "\n"


def fill_dataset_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets data.image_size and data.num_classes from the dataset of data.name and returns `config`.

  Configs leave both unset; a value set by hand that differs from the dataset's is a ConfigError.
  """
  d = config.data
  try:
    spec = specs.dataset_spec(d)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  height, width, _ = spec.image_shape
  derived = {
    "image_size": (height, f"gives {height}x{width} images"),
    "num_classes": (spec.num_classes, f"has {spec.num_classes} classes"),
  }
  errors = []
  for key, (value, what) in derived.items():
    if d[key] is None:
      d[key] = value
    elif d[key] != value:
      errors.append(
        f"data.{key}={d[key]} but dataset {d.name!r} {what}: data.{key} comes from "
        f"data.name, so leave it unset (drop --config.data.{key})."
      )
  if errors:
    raise ConfigError("\n".join(errors))
  return config


def config_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the --config value, the paths of the --config.<path> overrides) in a command line `argv`."""
  spec, paths = None, []
  for i, a in enumerate(argv):
    if m := re.match(r"^--?config(=(.*))?$", a):
      spec = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    elif m := re.match(r"^--?(no)?config\.([^=]+)", a):
      paths.append(m.group(2))
  return spec, paths


def unknown_overrides(argv: list[str]) -> list[str]:
  """The message of every --config.<path> override in `argv` naming no field of the config."""
  spec, paths = config_overrides(argv)
  if spec is None:
    return []
  path, _, arg = spec.partition(":")
  config = read_config(path, arg or None)
  return [m for p in paths if (m := unknown_field(config, p))]


def changes_line(config: ml_collections.ConfigDict, config_path: str) -> str:
  """The fields of `config` that differ from configs/default.py beside `config_path`, as the one
  line the command line logs (the full config is in each checkpoint's metadata)."""
  default_path = default_config_path(config_path)
  if not os.path.exists(default_path):
    return "(no configs/default.py beside it)"
  changed = changed_fields(config, read_config(default_path))
  if not changed:
    return "as configs/default.py"
  return "differs from configs/default.py in " + ", ".join(f"{k}={v!r}" for k, v in changed.items())


def describe_file(config: ml_collections.ConfigDict, config_path: str) -> str:
  """`describe` with the help of the configs/default.py beside `config_path` (--mode=show_config);
  a ConfigError when there is none."""
  default_path = default_config_path(config_path)
  if not os.path.exists(default_path):
    raise ConfigError(
      f"--mode=show_config reads the fields' help from configs/default.py beside the config "
      f"file, and there is none at {default_path}."
    )
  return describe(config, default_path=default_path)
