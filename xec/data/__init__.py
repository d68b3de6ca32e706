"""Data stage: ROOT -> normalized tar shards (`xec shards`, shards.py), their manifest
(manifest.py), the streaming ShardLoader (loader.py) and reweighting (`xec reweight`,
reweight.py). Import from the submodules; this package stays light so that `xec shards`
does not import torch."""
