"""`python -m snakemake` with the SLURM executor polling at a fixed interval (tests only).

snakemake-executor-plugin-slurm 2.x waits --slurm-init-seconds-before-status-checks, then adds
10 s to the wait after every status check that finds no finished job. On the one-node test
cluster each DAG level's jobs take 15-30 s, so every level cost 3 + 13 + 23 = 39 s of waiting
(the SLURM test took ~6.5 min, most of it asleep). Capping the wait changes only when the
executor looks, not what it submits or how it reads the answer; if a future plugin stops using
this property, the cap silently does nothing and the test is only slower.

    python tests/slurm_fixed_polling.py SNAKEMAKE_ARGS...
"""

from __future__ import annotations

from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

CAP_S = 3.0
_wait = RemoteExecutor.next_seconds_between_status_checks
if isinstance(_wait, property) and _wait.fset is not None:
    RemoteExecutor.next_seconds_between_status_checks = property(
        _wait.fget, lambda self, value: _wait.fset(self, min(value, CAP_S))
    )

if __name__ == "__main__":
    from snakemake.cli import main

    main()
