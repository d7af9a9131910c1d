"""The classifier kit: what trains and evaluates a classifier, for every stage that needs one.

The run's CLIP made once (run_clip.py), classifiers behind one interface (classifier.py, backbone.py), the losses,
the pure train step, the trainer (train state + jitted step), the resumable loop over a split (fit.py) and the
evaluation (evaluate.py). It imports models/ and data/, and no stage: detect/, baselines/ and adapt/ are peers
above it.
"""
