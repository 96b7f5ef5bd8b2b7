"""Unstructured (mask) pruning: the engine every mask method shares (:mod:`.engine`: scope,
attribution data, schedule, global selection, allocation, the iterative loop, resume) and the
methods that score weights on it: FVW (:mod:`.fvw`), the baselines (:mod:`.baselines`:
magnitude, Taylor, random, OBD) and the post-training peers (:mod:`.posttrain`: Wanda, OBS).
"""
