"""Pictures of a run: ranked lists of queries (:mod:`.ranked`) and pseudo-cluster montages (:mod:`.clusters`).

Entry point: ``python -m cacl_dist.visualize ranked|clusters ...`` (:mod:`.cli`). Drawing uses
PIL only (:mod:`.draw`); importing this package loads nothing heavy.
"""
