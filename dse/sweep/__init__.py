"""The sweep: Hydra config -> planned trials -> a queue in the store -> workers -> Optuna as sampler and record.

    python -m dse.sweep                                 # every paper table, quick budget, results/dse.db
    python -m dse.sweep experiment=table3 budget=smoke  # one table in a couple of minutes
    python -m dse.sweep experiment=table3 workers=4     # four worker processes on this host
    python -m dse.sweep -m experiment=table3,table4     # two studies, one after the other
    python -m dse.sweep experiment=table3 dry_run=true  # the planned trials and their cheap facts
    python -m dse.sweep --help                          # the config groups

One module per job: ``plan`` (the trials, and whether their data can be had), ``queue`` (claiming trials from
``dse_trials`` under a lease on the database's clock), ``record`` (Optuna: sampling and the dashboard's record),
``worker`` (the loop, one trial, failure classes), ``launch`` (``workers=N`` local processes), ``cli`` (the
Hydra application). docs/design.md tells why it is built this way.
"""

from dse.sweep.cli import main

__all__ = ["main"]
