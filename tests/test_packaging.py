"""The requirements a colab runtime already satisfies; the CPU wheels only through the `cpu` extra."""

import os
import re
import tomllib

from tests.helpers import REPO


def _project():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _name(requirement):
  return re.match(r"[A-Za-z0-9_.-]+(\[[^]]*\])?", requirement).group(0).lower()


def test_hard_requirements_are_a_jax_and_no_tensorflow_distribution():
  names = [_name(r) for r in _project()["dependencies"]]
  assert "jax" in names  # any jaxlib: the runtime's CUDA or TPU one stays
  assert not [n for n in names if n.startswith("jax[")], names
  tensorflows = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly", "tf-nightly-cpu"}
  assert not tensorflows & set(names), names
  assert "tensorflow-datasets" in names  # which needs TensorFlow only through its own extra


def test_cpu_extra_has_the_cpu_wheels_and_every_make_install_uses_it():
  assert sorted(_name(r) for r in _project()["optional-dependencies"]["cpu"]) == [
    "jax[cpu]",
    "tensorflow-cpu",
  ]
  with open(os.path.join(REPO, "Makefile")) as f:
    installs = [line for line in f if "pip install" in line and "-e" in line]
  assert len(installs) == 3 and all("'.[cpu" in line for line in installs), installs
