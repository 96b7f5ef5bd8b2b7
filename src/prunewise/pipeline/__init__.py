"""The pipeline: one pruning run (:mod:`.runs`) and the stages after pruning (:mod:`.stages`),
composed by the comparison grid (:mod:`.bench`) and the demo (:mod:`.demo`), rendered by
:mod:`.report`. The CLI, the demo, the bench grid and the benchmark scripts all run through it.
"""
