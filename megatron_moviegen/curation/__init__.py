"""Data curation before pre-encoding: raw videos -> scored single-shot clips -> one manifest per training stage
(`moviegen-curate`, docs/curation.md).

    config.py     the recipe: shots, analysis, camera, thresholds, stages (each stricter), balance
    shots.py      one decode per video: scene cuts (PySceneDetect) and the sampled frames; shots -> 4-16 s clips
    filters.py    resolution, aspect, black borders, burned-in text (RapidOCR), sharpness, the aesthetic plug-in
    motion.py     optical flow: motion magnitude, global pan/tilt/zoom, jitter
    camera.py     the camera-motion class and caption prefix
    dedup.py      perceptual hashes and near-duplicates
    balance.py    k-means concept clusters and resampling weights
    captions.py   sidecar captions, or a local vision-language model
    stages.py     recorded scores -> each stage's kept clips (no decoding)
    pipeline.py   the sharded, resumable run and the merge
    report.py     funnel, histograms and contact sheet as one PNG
    synthetic.py  made-up raw footage from the bundled clips (tests, docs)
"""
