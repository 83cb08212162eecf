"""The jobs of the command line: one module per --mode, each with `run(config, workdir)`.

A job validates its config first (`validation.validate`, which also checks the checkpoints and
networks it needs), then builds what it runs from the library; no library module imports a job.
"""

from cfg_jax import errors

errors.require_tensorflow()  # the jobs write TensorBoard events through clu, which imports it
