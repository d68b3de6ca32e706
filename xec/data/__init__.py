"""Data stage: ROOT -> normalized tar shards (`xec shards`, shards.py), their manifest
(manifest.py), random access to the shards' event ranges (reader.py), the streaming ShardLoader
(loader.py) and reweighting: the weight tables and weights.npz (weights.py) and the
`xec reweight` command (reweight.py). Dependencies point downward only: loader and reweight use
reader, weights and manifest, and never each other. Import from the submodules; this package
imports none of them, and of the submodules only loader.py needs torch (manifest, reader, weights
and reweight do not), so `xec reweight` runs without importing it."""
