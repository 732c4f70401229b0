"""The FiftyOne side, together: everything that imports ``fiftyone`` lives here, over a library that does not.

    sdk         propagate / evaluate any sample collection (what the operators call)
    operators   the plugin's operators and the DAVIS J&F custom metric (thin forms over ``sdk``)
    labels      FiftyOne labels <-> masks: prompts in, Segmentation / Detections / Heatmap out
    runs        what a run may write: field guards, the per-field lock, done keys
    dataio      DAVIS folders <-> FiftyOne video datasets
    demo        the README's demo dataset
"""
